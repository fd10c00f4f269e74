//! The exactly-once audit of the chaos harness (README "Chaos harness"): a pure function over
//! the emulators' and moto's own records ([`Records`]), never the bot's journal. Each check
//! pushes one `violation` line naming what happened how often.

use std::collections::BTreeMap;

use http::Method;
use tkgops_emulators::faults::RecordedRequest as HttpRecord;
use tkgops_emulators::kube::WriteRecord;

use super::stories::{Phase, Queued, Scheduled, CLUSTER, FLEET, SCHEDULE};
use crate::moto::RecordedRequest as MotoRecord;

/// What the audit reads, gathered from the emulators, moto and the bare remote.
#[derive(Default, Debug)]
pub(super) struct Records {
    /// Writes on the management cluster, in order.
    pub(super) mgmt: Vec<WriteRecord>,
    /// Writes on each workload cluster, in order.
    pub(super) workload: BTreeMap<String, Vec<WriteRecord>>,
    /// TMC's request log.
    pub(super) tmc: Vec<HttpRecord>,
    /// moto's request recording.
    pub(super) moto: Vec<MotoRecord>,
    /// The seeded VPC's subnet IDs.
    pub(super) subnets: Vec<String>,
    /// Sticky comments (`<!-- tkgops:sticky -->`) per pull request.
    pub(super) sticky: BTreeMap<u64, usize>,
    /// Every commit status: (commit, context, state, description).
    pub(super) statuses: Vec<(String, String, String, String)>,
    /// Head branches of the pull requests under `tkgops/schedule/<SCHEDULE>/`.
    pub(super) schedule_prs: Vec<String>,
    /// Messages of the commits on the fire's record branch that `main` does not hold; `None`
    /// when the branch does not exist.
    pub(super) wave_commits: Option<Vec<String>>,
}

/// Pushes a violation unless `n` is `want`.
fn expect(violations: &mut Vec<String>, what: String, n: usize, want: usize) {
    if n != want {
        let w = if want == 1 {
            "exactly once".to_string()
        } else {
            format!("{want} times")
        };
        violations.push(format!("{what}: {n} times, want {w}"));
    }
}

/// Changing, non-dry-run writes of Cluster `name` with one of `verbs`.
fn cluster_writes(w: &[WriteRecord], name: &str, verbs: &[&str]) -> usize {
    w.iter()
        .filter(|x| x.gvr.plural == "clusters" && x.name == name && !x.dry_run && x.changed)
        .filter(|x| verbs.contains(&x.verb.as_str()))
        .count()
}

/// EC2 `action` requests by tkgops on `subnet` carrying cluster `cluster`'s tag key.
fn ec2(m: &[MotoRecord], action: &str, subnet: &str, cluster: &str) -> usize {
    let tag = format!("kubernetes.io/cluster/{cluster}");
    m.iter()
        .filter(|r| r.is_tkgops_action_on(action, subnet))
        .filter(|r| r.params.iter().any(|(_, v)| *v == tag))
        .count()
}

/// TMC requests answered 2xx (not faulted) with `method` on exactly `path`.
fn tmc_ok(t: &[HttpRecord], method: &Method, path: &str) -> usize {
    t.iter()
        .filter(|r| !r.faulted && r.method == *method && r.path == path)
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .count()
}

fn slice<T>(v: &[T], from: usize, to: usize) -> &[T] {
    &v[from.min(v.len())..to.min(v.len()).max(from.min(v.len()))]
}

/// The audit: pushes each violation of the stories' expected outcomes and of exactly-once.
pub(super) fn audit(
    r: &Records,
    phases: &[Phase],
    queued: &Queued,
    scheduled: &Scheduled,
    violations: &mut Vec<String>,
) {
    // 1. Every run finished with the expected outcome.
    for (want, outcome) in [
        ("create", "success"),
        ("packages", "success"),
        ("failed+queued", "failure"),
        ("upgrade", "success"),
        ("delete", "success"),
        ("fleet-create", "success"),
        ("scheduled", "success"),
    ] {
        match phases.iter().find(|p| p.name == want) {
            Some(p) if p.apply == outcome => {}
            Some(p) => violations.push(format!(
                "{want} (PR #{}): tkgops/apply is {}, want {outcome}",
                p.pr, p.apply
            )),
            None => violations.push(format!("{want}: never ran (an earlier story failed)")),
        }
    }
    if phases.iter().any(|p| p.name == "failed+queued") {
        if !queued.was_queued {
            violations.push(
                "the second change never said `queued behind run …` while the first ran".into(),
            );
        }
        // README "Commands": `/tkgops cancel` cancels a queued run at once; its merge commit's
        // `tkgops/apply` is then a failure, and the reply says so.
        let (state, description) = &queued.cancelled_apply;
        if state != "failure" || !queued.cancel_reply.contains("cancelled before it started") {
            violations.push(format!(
                "the queued change after /tkgops cancel: tkgops/apply {state} \"{description}\", reply {:?}, want failure and \"cancelled before it started\"",
                queued.cancel_reply.chars().take(200).collect::<String>()
            ));
        }
    }
    if phases
        .iter()
        .any(|p| p.name == "scheduled" && p.apply == "success")
        && (!scheduled.finished || scheduled.halted)
    {
        violations.push(format!(
            "the scheduled apply did not finish its 2 waves (halted: {})",
            scheduled.halted
        ));
    }

    // 2. Cluster API and TMC effects per phase.
    for p in phases {
        let w = slice(&r.mgmt, p.start.kube, p.end.kube);
        let t = slice(&r.tmc, p.start.tmc, p.end.tmc);
        for c in &p.clusters {
            let name = p.name;
            match name {
                "create" | "fleet-create" => expect(
                    violations,
                    format!("{name}: Cluster {c} create (apply)"),
                    cluster_writes(w, c, &["apply", "create"]),
                    1,
                ),
                "upgrade" | "scheduled" => expect(
                    violations,
                    format!("{name}: Cluster {c} change"),
                    cluster_writes(w, c, &["apply", "patch", "update"]),
                    1,
                ),
                "delete" => {
                    expect(
                        violations,
                        format!("{name}: Cluster {c} delete"),
                        cluster_writes(w, c, &["delete"]),
                        1,
                    );
                    expect(
                        violations,
                        format!("{name}: TMC DELETE of {c}"),
                        tmc_ok(t, &Method::DELETE, &format!("/v1alpha1/clusters/{c}")),
                        1,
                    );
                }
                _ => {}
            }
        }
    }
    // TMC: one cluster POST per cluster; PUTs: only the upgrade's group move of team-a-prod.
    let created: usize = phases
        .iter()
        .filter(|p| p.name == "create" || p.name == "fleet-create")
        .map(|p| p.clusters.len())
        .sum();
    expect(
        violations,
        "TMC POST /v1alpha1/clusters (answered 2xx)".into(),
        tmc_ok(&r.tmc, &Method::POST, "/v1alpha1/clusters"),
        created,
    );
    let moved = phases.iter().any(|p| p.name == "upgrade") as usize;
    expect(
        violations,
        format!("TMC PUT of {CLUSTER} (answered 2xx)"),
        tmc_ok(
            &r.tmc,
            &Method::PUT,
            &format!("/v1alpha1/clusters/{CLUSTER}"),
        ),
        moved,
    );
    for c in FLEET {
        expect(
            violations,
            format!("TMC PUT of {c} (answered 2xx)"),
            tmc_ok(&r.tmc, &Method::PUT, &format!("/v1alpha1/clusters/{c}")),
            0,
        );
    }

    // 3. EC2 tags once per subnet and cluster.
    for p in phases {
        let (action, want) = match p.name {
            "create" | "fleet-create" => ("CreateTags", "tagged"),
            "delete" => ("DeleteTags", "untagged"),
            _ => continue,
        };
        for c in &p.clusters {
            let mut touched = 0;
            for s in &r.subnets {
                let n = ec2(&r.moto, action, s, c);
                if n > 0 {
                    touched += 1;
                    expect(violations, format!("EC2 {action} on {s} for {c}"), n, 1);
                }
            }
            if touched == 0 {
                violations.push(format!("{}: no subnet was {want} for {c}", p.name));
            }
        }
    }

    // 4. PackageInstalls created once; their values Secret written once, before.
    for (cluster, writes) in &r.workload {
        let mut creates: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut secrets: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, w) in writes.iter().enumerate() {
            if w.dry_run
                || !w.changed
                || !matches!(w.verb.as_str(), "create" | "apply" | "update" | "patch")
            {
                continue;
            }
            if w.gvr.plural == "packageinstalls" && matches!(w.verb.as_str(), "create" | "apply") {
                creates.entry(&w.name).or_default().push(i);
            }
            if w.gvr.plural == "secrets" && w.name.ends_with("-values") {
                secrets.entry(&w.name).or_default().push(i);
            }
        }
        for (name, at) in &creates {
            expect(
                violations,
                format!("{cluster}: PackageInstall {name} create"),
                at.len(),
                1,
            );
            let values = format!("{name}-{}-values", "tkg-system");
            let prefix = format!("{name}-");
            if let Some((secret, written)) = secrets
                .iter()
                .find(|(s, _)| **s == values || s.starts_with(&prefix))
            {
                expect(
                    violations,
                    format!("{cluster}: values Secret {secret} written"),
                    written.len(),
                    1,
                );
                if written.first() > at.first() {
                    violations.push(format!(
                        "{cluster}: values Secret {secret} written after its PackageInstall {name}"
                    ));
                }
            }
        }
    }
    if phases
        .iter()
        .any(|p| p.name == "packages" && p.apply == "success")
        && !r.workload.get(CLUSTER).is_some_and(|w| {
            w.iter()
                .any(|x| x.gvr.plural == "packageinstalls" && x.name == "fluent-bit")
        })
    {
        violations.push(format!(
            "packages: PackageInstall fluent-bit never written on {CLUSTER}"
        ));
    }

    // 5. GitHub: one sticky comment per PR; no status posted twice.
    for p in phases {
        expect(
            violations,
            format!("{}: sticky comment on PR #{}", p.name, p.pr),
            r.sticky.get(&p.pr).copied().unwrap_or(0),
            1,
        );
    }
    let mut seen: BTreeMap<&(String, String, String, String), usize> = BTreeMap::new();
    for s in &r.statuses {
        *seen.entry(s).or_default() += 1;
    }
    for ((sha, context, state, description), n) in seen {
        if n > 1 {
            violations.push(format!(
                "commit status {context} {state} \"{description}\" on {}: posted {n} times",
                &sha[..7.min(sha.len())]
            ));
        }
    }

    // 6. The scheduled apply: one bump (record) pull request, one wave commit per wave.
    if phases
        .iter()
        .any(|p| p.name == "scheduled" && p.apply == "success")
    {
        expect(
            violations,
            format!("pull requests of schedule {SCHEDULE}"),
            r.schedule_prs.len(),
            1,
        );
        if r.schedule_prs.iter().any(|h| *h != scheduled.record_branch) {
            violations.push(format!(
                "schedule {SCHEDULE}: pull requests from {:?}, want only {}",
                r.schedule_prs, scheduled.record_branch
            ));
        }
        match &r.wave_commits {
            None => violations.push(format!("{}: no such branch", scheduled.record_branch)),
            Some(msgs) => {
                expect(
                    violations,
                    format!("wave commits on {}", scheduled.record_branch),
                    msgs.len(),
                    2,
                );
                let mut distinct = msgs.clone();
                distinct.sort();
                distinct.dedup();
                if distinct.len() != msgs.len() {
                    violations.push(format!("a wave was committed twice: {msgs:?}"));
                }
            }
        }
    }

    // 7. No step after its run was cancelled or failed: the cancelled scale never wrote the
    //    Cluster, and after the failure nothing of team-a-prod changed until the next change.
    if let (Some(merged), Some(failed), Some(next)) = (queued.merged, queued.failed, queued.next) {
        let after_cancel = slice(&r.mgmt, merged.kube, next.kube);
        let n = cluster_writes(
            after_cancel,
            CLUSTER,
            &["apply", "patch", "update", "create"],
        );
        if n > 0 {
            violations.push(format!(
                "the cancelled run: {n} Cluster {CLUSTER} write(s) after it was cancelled"
            ));
        }
        let t = slice(&r.tmc, failed.tmc, next.tmc);
        let puts = t
            .iter()
            .filter(|x| !x.faulted && x.path == format!("/v1alpha1/clusters/{CLUSTER}"))
            .filter(|x| x.method != Method::GET)
            .count();
        if puts > 0 {
            violations.push(format!(
                "the failed run: {puts} TMC write(s) of {CLUSTER} after it failed"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::Mark;
    use tkgops_emulators::kube::Gvr;

    fn write(verb: &str, plural: &str, name: &str) -> WriteRecord {
        WriteRecord {
            verb: verb.into(),
            gvr: Gvr {
                group: String::new(),
                version: "v1".into(),
                plural: plural.into(),
            },
            namespace: None,
            name: name.into(),
            field_manager: None,
            changed: true,
            dry_run: false,
        }
    }

    fn tmc(method: Method, path: &str) -> HttpRecord {
        HttpRecord {
            method,
            path: path.into(),
            query: String::new(),
            faulted: false,
            content_type: String::new(),
            accept: String::new(),
            status: Some(200),
        }
    }

    fn tags(action: &str, subnet: &str, cluster: &str) -> MotoRecord {
        MotoRecord {
            user_agent: format!("aws-sdk-rust app/{}", tkgops_providers::aws::APP_NAME),
            access_key_id: None,
            params: vec![
                ("Action".into(), action.into()),
                ("ResourceId.1".into(), subnet.into()),
                (
                    "Tag.1.Key".into(),
                    format!("kubernetes.io/cluster/{cluster}"),
                ),
            ],
        }
    }

    fn at(kube: usize, tmc: usize) -> Mark {
        Mark { kube, tmc }
    }

    fn phase(
        name: &'static str,
        clusters: &[&str],
        pr: u64,
        apply: &str,
        s: Mark,
        e: Mark,
    ) -> Phase {
        Phase {
            name,
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            pr,
            apply: apply.into(),
            start: s,
            end: e,
        }
    }

    /// A clean history of every story, then the same history with each effect doubled or
    /// skipped: each check names its violation.
    #[test]
    fn each_check_fails_on_a_doubled_or_missing_effect() {
        let mut r = Records {
            subnets: vec!["subnet-1".into()],
            ..Records::default()
        };
        // create team-a (mgmt 0..1, tmc 0..1), packages, failed+queued (mgmt 1..1, tmc 1..2),
        // upgrade (mgmt 1..2, tmc 2..3), delete (mgmt 2..3, tmc 3..4), fleet (mgmt 3..7).
        r.mgmt = vec![
            write("apply", "clusters", CLUSTER),
            write("apply", "clusters", CLUSTER),
            write("delete", "clusters", CLUSTER),
            write("apply", "clusters", FLEET[0]),
            write("apply", "clusters", FLEET[1]),
            write("apply", "clusters", FLEET[0]),
            write("apply", "clusters", FLEET[1]),
        ];
        let mut failed_put = tmc(Method::PUT, &format!("/v1alpha1/clusters/{CLUSTER}"));
        failed_put.status = Some(404);
        r.tmc = vec![
            tmc(Method::POST, "/v1alpha1/clusters"),
            failed_put,
            tmc(Method::PUT, &format!("/v1alpha1/clusters/{CLUSTER}")),
            tmc(Method::DELETE, &format!("/v1alpha1/clusters/{CLUSTER}")),
            tmc(Method::POST, "/v1alpha1/clusters"),
            tmc(Method::POST, "/v1alpha1/clusters"),
        ];
        r.moto = vec![
            tags("CreateTags", "subnet-1", CLUSTER),
            tags("DeleteTags", "subnet-1", CLUSTER),
            tags("CreateTags", "subnet-1", FLEET[0]),
            tags("CreateTags", "subnet-1", FLEET[1]),
        ];
        r.workload.insert(
            CLUSTER.into(),
            vec![
                write("apply", "secrets", "fluent-bit-tkg-system-values"),
                write("apply", "packageinstalls", "fluent-bit"),
            ],
        );
        for pr in 1..=7 {
            r.sticky.insert(pr, 1);
        }
        r.statuses = vec![(
            "abc1234".into(),
            "tkgops/apply".into(),
            "success".into(),
            "ok".into(),
        )];
        let record = "tkgops/schedule/waves/apply-20261207T020000Z".to_string();
        r.schedule_prs = vec![record.clone()];
        r.wave_commits = Some(vec!["canary".into(), "rest".into()]);
        let phases = vec![
            phase("create", &[CLUSTER], 1, "success", at(0, 0), at(1, 1)),
            phase("packages", &[CLUSTER], 2, "success", at(1, 1), at(1, 1)),
            phase(
                "failed+queued",
                &[CLUSTER],
                3,
                "failure",
                at(1, 1),
                at(1, 2),
            ),
            phase("upgrade", &[CLUSTER], 4, "success", at(1, 2), at(2, 3)),
            phase("delete", &[CLUSTER], 5, "success", at(2, 3), at(3, 4)),
            phase("fleet-create", &FLEET, 6, "success", at(3, 4), at(5, 6)),
            phase("scheduled", &FLEET, 7, "success", at(5, 6), at(7, 6)),
        ];
        let queued = Queued {
            failed_apply: "failure".into(),
            cancelled_apply: ("failure".into(), "1 of 1 run(s) failed".into()),
            cancel_reply: "run x cancelled before it started".into(),
            was_queued: true,
            merged: Some(at(1, 1)),
            failed: Some(at(1, 2)),
            next: Some(at(1, 2)),
        };
        let scheduled = Scheduled {
            record_branch: record,
            finished: true,
            halted: false,
        };
        let run = |r: &Records, q: &Queued| {
            let mut v = Vec::new();
            audit(r, &phases, q, &scheduled, &mut v);
            v
        };
        assert_eq!(run(&r, &queued), Vec::<String>::new());

        type Break = Box<dyn Fn(&mut Records)>;
        let breaks: Vec<(&str, Break)> = vec![
            (
                "Cluster team-b-prod create",
                Box::new(|r| r.mgmt.insert(3, write("apply", "clusters", FLEET[0]))),
            ),
            (
                "TMC POST",
                Box::new(|r| r.tmc.push(tmc(Method::POST, "/v1alpha1/clusters"))),
            ),
            (
                "TMC PUT of team-a-prod",
                Box::new(|r| {
                    r.tmc
                        .push(tmc(Method::PUT, "/v1alpha1/clusters/team-a-prod"))
                }),
            ),
            (
                "EC2 CreateTags on subnet-1 for team-c-prod",
                Box::new(|r| r.moto.push(tags("CreateTags", "subnet-1", FLEET[1]))),
            ),
            (
                "EC2 DeleteTags on subnet-1 for team-a-prod",
                Box::new(|r| r.moto.push(tags("DeleteTags", "subnet-1", CLUSTER))),
            ),
            (
                "PackageInstall fluent-bit create",
                Box::new(|r| {
                    if let Some(w) = r.workload.get_mut(CLUSTER) {
                        w.push(write("create", "packageinstalls", "fluent-bit"))
                    }
                }),
            ),
            (
                "written after its PackageInstall",
                Box::new(|r| {
                    if let Some(w) = r.workload.get_mut(CLUSTER) {
                        w.swap(0, 1)
                    }
                }),
            ),
            (
                "sticky comment on PR #4",
                Box::new(|r| {
                    r.sticky.insert(4, 2);
                }),
            ),
            (
                "posted 2 times",
                Box::new(|r| {
                    let s = r.statuses[0].clone();
                    r.statuses.push(s);
                }),
            ),
            (
                "pull requests of schedule waves",
                Box::new(|r| r.schedule_prs.push("tkgops/schedule/waves/v1.25.7".into())),
            ),
            (
                "a wave was committed twice",
                Box::new(|r| r.wave_commits = Some(vec!["canary".into(), "canary".into()])),
            ),
            (
                "wave commits on",
                Box::new(|r| r.wave_commits = Some(vec!["canary".into()])),
            ),
        ];
        for (want, b) in breaks {
            let mut broken = Records {
                mgmt: r.mgmt.clone(),
                workload: r.workload.clone(),
                tmc: r.tmc.clone(),
                moto: r.moto.clone(),
                subnets: r.subnets.clone(),
                sticky: r.sticky.clone(),
                statuses: r.statuses.clone(),
                schedule_prs: r.schedule_prs.clone(),
                wave_commits: r.wave_commits.clone(),
            };
            b(&mut broken);
            let v = run(&broken, &queued);
            assert!(v.iter().any(|l| l.contains(want)), "{want}: {v:?}");
        }
        // A Cluster write by the cancelled run; a TMC write after the failure.
        let mut late = Queued {
            next: Some(at(2, 3)),
            ..queued.clone()
        };
        late.merged = Some(at(1, 1));
        let v = run(&r, &late);
        assert!(
            v.iter().any(|l| l.contains("after it was cancelled")),
            "{v:?}"
        );
        assert!(v.iter().any(|l| l.contains("after it failed")), "{v:?}");
        let mut uncancelled = queued.clone();
        uncancelled.cancelled_apply = ("success".into(), String::new());
        let v = run(&r, &uncancelled);
        assert!(
            v.iter().any(|l| l.contains("cancelled before it started")),
            "{v:?}"
        );
    }
}
