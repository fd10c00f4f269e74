//! Integration tests: the AWS provider (`aws.preflight`) against a real moto server on loopback.
//!
//! Every test starts its own moto (about 1-2 s); if `moto_server` cannot be found the test fails
//! with the hint to run `scripts/setup-venv.sh`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::types::{Filter, Tag};
use serde_json::{json, Value};
use tkgops_engine::{ProgressSink, RetryPolicy, StepContext, StepError, StepSpec};
use tkgops_providers::aws::{AwsExecutor, AwsPreflightOutput, AwsRemoveSubnetTagsOutput};
use tkgops_sandbox::moto::{seed_vpc, MotoServer, SeededVpc};

use crate::support::ExecuteStep;

const REGION: &str = "us-west-2";
const AZS: [&str; 3] = ["us-west-2a", "us-west-2b", "us-west-2c"];

async fn start_moto() -> MotoServer {
    tkgops_providers::install_crypto_provider();
    match MotoServer::start().await {
        Ok(m) => m,
        Err(e) => panic!("cannot start moto (the AWS tests need it): {e}"),
    }
}

fn executor(moto: &MotoServer) -> AwsExecutor {
    AwsExecutor::new(Some(moto.endpoint_url())).with_credentials(MotoServer::credentials())
}

fn ctx(inputs: Value, progress: ProgressSink) -> StepContext {
    ctx_kind("aws.preflight", inputs, progress)
}

fn ctx_kind(kind: &str, inputs: Value, progress: ProgressSink) -> StepContext {
    StepContext {
        run_id: "run-1".into(),
        cluster: "team-a-prod".into(),
        commit_sha: "0".repeat(40),
        step: StepSpec {
            id: "preflight".into(),
            title: "AWS preflight".into(),
            timeout_secs: 120,
            retry: RetryPolicy::default(),
            inputs: crate::support::step_inputs(kind, inputs),
        },
        attempt: 1,
        outputs: BTreeMap::new(),
        progress,
    }
}

/// Inputs for the seeded VPC (3 AZs, private + public subnet each).
fn existing_vpc_inputs(vpc: &SeededVpc) -> Value {
    let subnets: Vec<Value> = (0..vpc.azs.len())
        .map(|i| {
            json!({"az": vpc.azs[i], "privateId": vpc.private_subnet_ids[i], "publicId": vpc.public_subnet_ids[i],
                   "privateCidr": null, "publicCidr": null})
        })
        .collect();
    json!({
        "clusterName": "team-a-prod", "region": REGION, "azs": vpc.azs,
        "vpc": {"existingId": vpc.vpc_id, "cidr": vpc.cidr},
        "subnets": subnets,
        "instanceTypes": ["m5.xlarge", "t3.large"],
        "clusterCidr": "100.96.0.0/11", "serviceCidr": "100.64.0.0/13"
    })
}

fn new_vpc_inputs(cidr: &str) -> Value {
    json!({
        "clusterName": "team-b-dev", "region": REGION, "azs": AZS,
        "vpc": {"existingId": null, "cidr": cidr},
        "subnets": [], "instanceTypes": ["t3.large"],
        "clusterCidr": "100.96.0.0/11", "serviceCidr": "100.64.0.0/13"
    })
}

async fn run(exec: &AwsExecutor, inputs: Value) -> Result<Value, StepError> {
    exec.execute(&ctx(inputs, ProgressSink::noop())).await
}

fn expect_permanent(res: Result<Value, StepError>, needles: &[&str]) {
    match res {
        Err(StepError::Permanent(msg)) => {
            for n in needles {
                assert!(msg.contains(n), "message {msg:?} should contain {n:?}");
            }
        }
        other => panic!("expected a permanent error containing {needles:?}, got {other:?}"),
    }
}

async fn subnets_with_tag_key(
    client: &aws_sdk_ec2::Client,
    key: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    let out = client
        .describe_subnets()
        .filters(Filter::builder().name("tag-key").values(key).build())
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeSubnets: {e:?}"));
    let mut v: Vec<_> = out
        .subnets()
        .iter()
        .map(|s| {
            let tags = s
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or("").to_string(),
                        t.value().unwrap_or("").to_string(),
                    )
                })
                .collect();
            (s.subnet_id().unwrap_or("").to_string(), tags)
        })
        .collect();
    v.sort();
    v
}

fn tag_value(tags: &[(String, String)], key: &str) -> Option<String> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn preflight_existing_vpc_tags_subnets_once() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let vpc = seed_vpc(&client, "10.20.0.0/16", &AZS).await.expect("seed");
    // One subnet already carries the cluster key with CAPA's "owned": only its role tag is added
    // and the value is left alone.
    client
        .create_tags()
        .resources(&vpc.private_subnet_ids[0])
        .tags(
            Tag::builder()
                .key("kubernetes.io/cluster/team-a-prod")
                .value("owned")
                .build(),
        )
        .send()
        .await
        .expect("pre-tag");

    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = {
        let lines = lines.clone();
        ProgressSink::new(move |l| lines.lock().expect("lock").push(l.to_string()))
    };
    let exec = executor(&moto);
    let out = exec
        .execute(&ctx(existing_vpc_inputs(&vpc), sink))
        .await
        .expect("preflight");
    let out: AwsPreflightOutput = serde_json::from_value(out).expect("output shape");
    assert_eq!(out.region, REGION);
    assert_eq!(out.vpc_id.as_deref(), Some(vpc.vpc_id.as_str()));
    assert_eq!(
        out.azs,
        AZS.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        out.instance_types,
        vec!["m5.xlarge".to_string(), "t3.large".to_string()]
    );
    assert_eq!(out.tagged_subnets.len(), 6, "{out:?}");
    assert!(out.already_tagged.is_empty());
    let progress = lines.lock().expect("lock").clone();
    assert_eq!(progress.len(), 6, "{progress:?}");
    assert!(
        progress[0].starts_with("1/6") && progress[5].starts_with("6/6"),
        "{progress:?}"
    );

    let tagged = subnets_with_tag_key(&client, "kubernetes.io/cluster/team-a-prod").await;
    let mut expected: Vec<String> = vpc
        .private_subnet_ids
        .iter()
        .chain(&vpc.public_subnet_ids)
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(
        tagged.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    for (id, tags) in &tagged {
        let cluster = tag_value(tags, "kubernetes.io/cluster/team-a-prod");
        if *id == vpc.private_subnet_ids[0] {
            assert_eq!(cluster.as_deref(), Some("owned"));
        } else {
            assert_eq!(cluster.as_deref(), Some("shared"), "{id}");
        }
        if vpc.private_subnet_ids.contains(id) {
            assert_eq!(
                tag_value(tags, "kubernetes.io/role/internal-elb").as_deref(),
                Some("1"),
                "{id}"
            );
            assert_eq!(tag_value(tags, "kubernetes.io/role/elb"), None, "{id}");
        } else {
            assert_eq!(
                tag_value(tags, "kubernetes.io/role/elb").as_deref(),
                Some("1"),
                "{id}"
            );
            assert_eq!(
                tag_value(tags, "kubernetes.io/role/internal-elb"),
                None,
                "{id}"
            );
        }
    }
    assert_eq!(
        subnets_with_tag_key(&client, "kubernetes.io/role/internal-elb")
            .await
            .len(),
        3
    );
    assert_eq!(
        subnets_with_tag_key(&client, "kubernetes.io/role/elb")
            .await
            .len(),
        3
    );

    // Second run: nothing new.
    let again: AwsPreflightOutput = serde_json::from_value(
        run(&exec, existing_vpc_inputs(&vpc))
            .await
            .expect("second preflight"),
    )
    .expect("output shape");
    assert!(again.tagged_subnets.is_empty(), "{again:?}");
    assert_eq!(again.already_tagged.len(), 6);
    moto.stop().await;
}

#[tokio::test]
async fn preflight_new_vpc_cidr_must_not_overlap() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let exec = executor(&moto);

    // moto's default VPC is 172.31.0.0/16; 10.0.0.0/16 is free.
    let out = run(&exec, new_vpc_inputs("10.0.0.0/16"))
        .await
        .expect("new VPC preflight");
    assert_eq!(out["vpcId"], Value::Null);
    assert_eq!(out["taggedSubnets"], json!([]));
    assert_eq!(out["alreadyTagged"], json!([]));

    let existing = seed_vpc(&client, "10.50.0.0/16", &AZS).await.expect("seed");
    expect_permanent(
        run(&exec, new_vpc_inputs("10.50.128.0/17")).await,
        &["10.50.128.0/17", &existing.vpc_id],
    );
    expect_permanent(
        run(&exec, new_vpc_inputs("172.31.0.0/16")).await,
        &["overlaps VPC", "172.31.0.0/16"],
    );

    // New-VPC subnet CIDRs must lie inside the VPC CIDR.
    let mut bad = new_vpc_inputs("10.0.0.0/16");
    bad["subnets"] =
        json!([{"az": "us-west-2a", "privateCidr": "10.9.0.0/24", "publicCidr": "10.0.1.0/24"}]);
    expect_permanent(run(&exec, bad).await, &["10.9.0.0/24", "not inside"]);
    moto.stop().await;
}

#[tokio::test]
async fn preflight_instance_types() {
    let moto = start_moto().await;
    let exec = executor(&moto);
    let mut inputs = new_vpc_inputs("10.0.0.0/16");
    inputs["instanceTypes"] = json!(["t3.large", "m5.xlarge"]);
    let out = run(&exec, inputs.clone()).await.expect("known types pass");
    assert_eq!(out["instanceTypes"], json!(["t3.large", "m5.xlarge"]));

    inputs["instanceTypes"] = json!(["t3.large", "m5.humongous"]);
    expect_permanent(
        run(&exec, inputs).await,
        &["instance type check", "m5.humongous"],
    );
    moto.stop().await;
}

#[tokio::test]
async fn preflight_rejects_bad_subnets_and_vpc() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let vpc = seed_vpc(&client, "10.30.0.0/16", &AZS).await.expect("seed");
    let other = seed_vpc(&client, "10.31.0.0/16", &AZS)
        .await
        .expect("seed other");
    let exec = executor(&moto);

    // A subnet id that does not exist.
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["subnets"][1]["privateId"] = json!("subnet-0123456789abcdef0");
    expect_permanent(
        run(&exec, inputs).await,
        &[
            "cannot find subnet(s) subnet-0123456789abcdef0",
            &vpc.vpc_id,
        ],
    );

    // A subnet of another VPC.
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["subnets"][0]["publicId"] = json!(other.public_subnet_ids[0]);
    expect_permanent(
        run(&exec, inputs).await,
        &[
            "cannot find subnet(s)",
            &other.public_subnet_ids[0],
            &other.vpc_id,
        ],
    );

    // A subnet in the wrong AZ: the private subnets of a and b swapped.
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["subnets"][0]["privateId"] = json!(vpc.private_subnet_ids[1]);
    inputs["subnets"][1]["privateId"] = json!(vpc.private_subnet_ids[0]);
    expect_permanent(
        run(&exec, inputs).await,
        &[&vpc.private_subnet_ids[1], "us-west-2b", "us-west-2a"],
    );

    // A VPC that does not exist.
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["vpc"]["existingId"] = json!("vpc-0123456789abcdef0");
    expect_permanent(
        run(&exec, inputs).await,
        &["VPC vpc-0123456789abcdef0 not found in region us-west-2"],
    );

    // Nothing was tagged by the failed runs.
    assert!(
        subnets_with_tag_key(&client, "kubernetes.io/cluster/team-a-prod")
            .await
            .is_empty()
    );
    moto.stop().await;
}

#[tokio::test]
async fn preflight_rejects_bad_azs_and_overlapping_cidrs() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let vpc = seed_vpc(&client, "10.40.0.0/16", &AZS).await.expect("seed");
    let exec = executor(&moto);

    // An AZ of another region.
    let mut inputs = new_vpc_inputs("10.0.0.0/16");
    inputs["azs"] = json!(["us-west-2a", "us-east-1b", "us-west-2c"]);
    expect_permanent(
        run(&exec, inputs).await,
        &["availability zone check", "us-east-1b", REGION],
    );

    // A region that does not exist.
    let mut inputs = new_vpc_inputs("10.0.0.0/16");
    inputs["region"] = json!("xx-nowhere-9");
    inputs["azs"] = json!(["xx-nowhere-9a"]);
    expect_permanent(
        run(&exec, inputs).await,
        &["region check", "xx-nowhere-9 does not exist"],
    );
    let mut inputs = new_vpc_inputs("10.0.0.0/16");
    inputs["region"] = json!("US_WEST_2");
    expect_permanent(run(&exec, inputs).await, &["region check", "US_WEST_2"]);

    // CLUSTER_CIDR overlapping the (existing) VPC.
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["clusterCidr"] = json!("10.40.0.0/11");
    expect_permanent(
        run(&exec, inputs).await,
        &["CLUSTER_CIDR", "10.32.0.0/11", "10.40.0.0/16"],
    );

    // SERVICE_CIDR overlapping a new VPC.
    let mut inputs = new_vpc_inputs("100.64.0.0/16");
    inputs["serviceCidr"] = json!("100.64.0.0/13");
    expect_permanent(run(&exec, inputs).await, &["SERVICE_CIDR", "100.64.0.0/13"]);
    moto.stop().await;
}

#[tokio::test]
async fn preflight_unreachable_endpoint_is_transient() {
    let moto = start_moto().await;
    let exec = executor(&moto);
    moto.stop().await;
    match run(&exec, new_vpc_inputs("10.0.0.0/16")).await {
        Err(StepError::Transient(msg)) => {
            assert!(msg.contains("DescribeRegions"), "{msg}");
            assert!(!msg.contains("testing"), "credentials must not leak: {msg}");
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test]
async fn moto_reset_clears_state() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let vpc = seed_vpc(&client, "10.60.0.0/16", &AZS[..1])
        .await
        .expect("seed");
    moto.reset().await.expect("reset");
    let out = client.describe_vpcs().vpc_ids(&vpc.vpc_id).send().await;
    assert!(out.is_err() || out.map(|o| o.vpcs().is_empty()).unwrap_or(false));
    moto.stop().await;
}

async fn remove_tags(exec: &AwsExecutor, inputs: Value) -> AwsRemoveSubnetTagsOutput {
    let out = exec
        .execute(&ctx_kind(
            "aws.remove-subnet-tags",
            inputs,
            ProgressSink::noop(),
        ))
        .await
        .expect("aws.remove-subnet-tags");
    serde_json::from_value(out).expect("output shape")
}

/// `aws.remove-subnet-tags` removes only `kubernetes.io/cluster/<name>` from the subnets of an
/// existing VPC: the role tags and other clusters' tags stay; a second run deletes nothing; a
/// subnet deleted meanwhile is reported, not an error.
#[tokio::test]
async fn remove_subnet_tags_existing_vpc_keeps_role_tags_and_is_idempotent() {
    let moto = start_moto().await;
    let client = moto.ec2_client(REGION);
    let vpc = seed_vpc(&client, "10.70.0.0/16", &AZS).await.expect("seed");
    let exec = executor(&moto);
    run(&exec, existing_vpc_inputs(&vpc))
        .await
        .expect("preflight tags the subnets");
    // Another cluster of the VPC shares a subnet.
    client
        .create_tags()
        .resources(&vpc.private_subnet_ids[1])
        .tags(
            Tag::builder()
                .key("kubernetes.io/cluster/team-b-prod")
                .value("shared")
                .build(),
        )
        .send()
        .await
        .expect("tag for the other cluster");
    let key = "kubernetes.io/cluster/team-a-prod";
    assert_eq!(subnets_with_tag_key(&client, key).await.len(), 6);

    let out = remove_tags(&exec, existing_vpc_inputs(&vpc)).await;
    assert_eq!(out.vpc_id.as_deref(), Some(vpc.vpc_id.as_str()));
    assert_eq!(out.tag_key, key);
    assert_eq!(out.untagged_subnets.len(), 6, "{out:?}");
    assert!(out.already_untagged.is_empty() && out.missing_subnets.is_empty());
    assert!(subnets_with_tag_key(&client, key).await.is_empty());
    assert_eq!(
        subnets_with_tag_key(&client, "kubernetes.io/role/internal-elb")
            .await
            .len(),
        3
    );
    assert_eq!(
        subnets_with_tag_key(&client, "kubernetes.io/role/elb")
            .await
            .len(),
        3
    );
    let other = subnets_with_tag_key(&client, "kubernetes.io/cluster/team-b-prod").await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].0, vpc.private_subnet_ids[1]);

    // Second run: nothing left to delete.
    let again = remove_tags(&exec, existing_vpc_inputs(&vpc)).await;
    assert!(again.untagged_subnets.is_empty(), "{again:?}");
    assert_eq!(again.already_untagged.len(), 6);

    // A subnet that no longer exists is reported, not an error; the others are still handled.
    client
        .create_tags()
        .resources(&vpc.public_subnet_ids[2])
        .tags(Tag::builder().key(key).value("owned").build())
        .send()
        .await
        .expect("re-tag");
    let mut inputs = existing_vpc_inputs(&vpc);
    inputs["subnets"][0]["privateId"] = json!("subnet-0123456789abcdef0");
    let out = remove_tags(&exec, inputs).await;
    assert_eq!(
        out.missing_subnets,
        vec!["subnet-0123456789abcdef0".to_string()]
    );
    assert_eq!(out.untagged_subnets, vec![vpc.public_subnet_ids[2].clone()]);
    assert!(subnets_with_tag_key(&client, key).await.is_empty());
    moto.stop().await;
}

/// With a VPC Cluster API created there is nothing to untag.
#[tokio::test]
async fn remove_subnet_tags_new_vpc_is_a_no_op() {
    let moto = start_moto().await;
    let exec = executor(&moto);
    let out = remove_tags(&exec, new_vpc_inputs("10.0.0.0/16")).await;
    assert_eq!(out.vpc_id, None);
    assert!(out.untagged_subnets.is_empty() && out.missing_subnets.is_empty());
    assert!(out.note.contains("new VPC"), "{}", out.note);
    moto.stop().await;
}

/// Issue 19: each management cluster's AWS steps run as its own role. Two clusters of two
/// management clusters (two accounts) are preflighted: moto's own recording shows one STS
/// `AssumeRole` per role (with the external ID and session name `tkgops`), and every EC2 call
/// signed with the assumed role's credentials, never with the bot's own.
#[tokio::test]
async fn each_management_clusters_aws_steps_run_as_its_own_role() {
    let moto = start_moto().await;
    let role_a = "arn:aws:iam::111111111111:role/tkgops-mc-aws-1";
    let role_b = "arn:aws:iam::222222222222:role/tkgops-mc-aws-2";
    // moto keeps each account's EC2 apart, as AWS does: each VPC is seeded in its role's account,
    // by another executor (whose calls are left out below).
    let identity = |arn: &str| tkgops_domain::request::AwsIdentity {
        role_arn: arn.into(),
        external_id: None,
        region: None,
    };
    let seeder = executor(&moto);
    let vpc_a = seed_vpc(
        &seeder.client_as(REGION, Some(&identity(role_a))).await,
        "10.60.0.0/16",
        &AZS,
    )
    .await
    .expect("seed A");
    let vpc_b = seed_vpc(
        &seeder.client_as(REGION, Some(&identity(role_b))).await,
        "10.70.0.0/16",
        &AZS,
    )
    .await
    .expect("seed B");
    let seeded = moto.recorded().expect("moto's recording").len();
    let exec = executor(&moto);
    let mut a = existing_vpc_inputs(&vpc_a);
    a["identity"] = json!({"roleArn": role_a, "externalId": "tkgops-ext-1"});
    let mut b = existing_vpc_inputs(&vpc_b);
    b["clusterName"] = json!("team-b-prod");
    b["identity"] = json!({"roleArn": role_b});
    run(&exec, a.clone()).await.expect("preflight as role A");
    run(&exec, b).await.expect("preflight as role B");
    run(&exec, a)
        .await
        .expect("again as role A: the client is cached");

    let recorded = moto.recorded().expect("moto's recording");
    let ours: Vec<_> = recorded[seeded..]
        .iter()
        .filter(|r| r.from_app(tkgops_providers::aws::APP_NAME))
        .collect();
    let assumes: Vec<_> = ours
        .iter()
        .filter(|r| r.param("Action") == Some("AssumeRole"))
        .collect();
    let arns: Vec<_> = assumes
        .iter()
        .map(|r| r.param("RoleArn").unwrap())
        .collect();
    assert_eq!(
        arns,
        [role_a, role_b],
        "one AssumeRole per role; the credentials are cached"
    );
    assert_eq!(assumes[0].param("ExternalId"), Some("tkgops-ext-1"));
    assert_eq!(assumes[1].param("ExternalId"), None);
    assert!(assumes
        .iter()
        .all(|r| r.param("RoleSessionName") == Some("tkgops")));
    assert!(
        assumes
            .iter()
            .all(|r| r.access_key_id.as_deref() == Some("testing")),
        "the roles are assumed with the bot's own identity"
    );
    let ec2_keys: std::collections::BTreeSet<_> = ours
        .iter()
        .filter(|r| r.action().is_some_and(|a| a.starts_with("ec2:")))
        .map(|r| r.access_key_id.clone().unwrap_or_default())
        .collect();
    assert_eq!(ec2_keys.len(), 2, "one key per role: {ec2_keys:?}");
    assert!(
        !ec2_keys.contains("testing"),
        "no EC2 call is made as the bot's own identity: {ec2_keys:?}"
    );
}
