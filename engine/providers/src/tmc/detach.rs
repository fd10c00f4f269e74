//! The `tmc.detach` step: detach a workload cluster from TMC the way TMC-TF's
//! `resourceClusterDelete` does (docs/tanzu-apis.md §3.5 step 5, §3.3 "Delete/detach").
//!
//! 1. `GET` the cluster; 404 means it is not attached: success at once (idempotent).
//! 2. The cluster must carry this request's ownership label ([`OWNER_LABEL`] in
//!    `meta.labels`, see `attach.rs`); otherwise the step fails permanently and nothing is
//!    deleted (TMC names are organisation-wide: another team's cluster may have the name).
//! 3. `DELETE /v1alpha1/clusters/{name}?force=false&fullName.managementClusterName=…&
//!    fullName.provisionerName=…` (skipped when the cluster is already `DETACHING`, i.e. an
//!    earlier attempt sent it), then `GET` every poll interval until 404, or until the name
//!    answers with another `meta.uid` (the cluster tkgops checked is gone; the new one is not
//!    touched).
//! 4. Still there (same uid) after the detach timeout: `DELETE …?force=true`, then `GET` until
//!    404 (or another uid) for at most the same time again.
//!
//! TMC's `DELETE` takes no precondition (docs/tanzu-apis.md §3.3), so a cluster replaced between
//! the `GET` and a `DELETE` of one attempt cannot be told apart by TMC; the window is one
//! request long, and every `DELETE` is preceded by a `GET` of the same uid.

use tokio::time::Instant;

use super::attach::{
    check_owned, require_owner_mark, resolve_full_name, TmcExecutor, MAX_POLL_ERRORS,
};
use super::client::{ClusterPoll, TmcClient};
use super::models::{Cluster, FullName, PHASE_DETACHING};
use super::TmcError;
use crate::wait::{drive, DriveOptions};
use tkgops_domain::executor::{StepContext, StepError};
use tkgops_domain::output::TmcDetachOutput;
use tkgops_domain::step::TmcClusterInputs;
use tkgops_domain::wait::tmc::{Gone, TmcClusterGone};
#[cfg(doc)]
use tkgops_domain::workflow::plan::OWNER_LABEL;

impl TmcExecutor {
    /// Runs one attempt of `tmc.detach` for `inputs` (see the module docs).
    ///
    /// Returns the [`TmcDetachOutput`] (`{"cluster":"mc/provisioner/name","wasAttached":bool,
    /// "forced":bool}`): `wasAttached` is false when the cluster was already gone, `forced`
    /// whether the `force=true` delete was needed.
    ///
    /// Errors: Permanent for inputs without an ownership mark, a TMC cluster that does not
    /// carry this request's ownership label ("… is not owned by …; tkgops will not detach
    /// it"), a missing API token, a refused token exchange and 4xx answers other than
    /// 404/409/429; Transient for 429/5xx and connection errors (after
    /// `MAX_POLL_ERRORS` in a row while polling) and for a cluster still present after the
    /// forced delete's wait.
    pub async fn detach(
        &self,
        ctx: &StepContext,
        inputs: &TmcClusterInputs,
    ) -> Result<TmcDetachOutput, StepError> {
        require_owner_mark(inputs)?;
        let client = self.client(&inputs.endpoint, &inputs.csp_endpoint)?;
        let (full_name, shown) = resolve_full_name(inputs);
        let out = |was_attached: bool, forced: bool| TmcDetachOutput {
            cluster: shown.clone(),
            was_attached,
            forced,
        };

        let Some(c) = client.get_cluster(&full_name).await? else {
            ctx.progress.report(&format!(
                "TMC cluster {shown} is not attached; nothing to detach"
            ));
            return Ok(out(false, false));
        };
        check_owned(&c, inputs, &shown, "detach")?;
        let uid = c.meta.uid.clone();
        if c.phase() == PHASE_DETACHING {
            ctx.progress.report(&format!(
                "TMC cluster {shown} is already detaching; waiting for it to go"
            ));
        } else {
            ctx.progress.report(&format!(
                "detaching {shown} from TMC (phase {}, health {})",
                c.phase(),
                c.health()
            ));
            delete(&client, &full_name, false).await?;
        }
        match self
            .wait_gone(ctx, &client, &full_name, &shown, uid.as_deref())
            .await?
        {
            Gone::Yes | Gone::Replaced(_) => {
                ctx.progress.report(&format!("TMC cluster {shown} detached"));
                return Ok(out(true, false));
            }
            Gone::StillThere(phase) => ctx.progress.report(&format!(
                "TMC cluster {shown} is still there after {:?} (phase {phase}); detaching with force=true",
                self.detach_timeout
            )),
        }
        delete(&client, &full_name, true).await?;
        match self
            .wait_gone(ctx, &client, &full_name, &shown, uid.as_deref())
            .await?
        {
            Gone::Yes | Gone::Replaced(_) => {
                ctx.progress
                    .report(&format!("TMC cluster {shown} detached (forced)"));
                Ok(out(true, true))
            }
            Gone::StillThere(phase) => Err(StepError::Transient(format!(
                "TMC cluster {shown} is still there {:?} after a forced detach (phase {phase})",
                self.detach_timeout
            ))),
        }
    }

    /// Polls `GET` every `poll_interval` until 404, until the name answers with a `meta.uid`
    /// other than `uid` (the cluster tkgops deleted is gone and a new one took the name), or
    /// until `detach_timeout` has passed (tokio time, so paused-clock tests run instantly):
    /// judge [`TmcClusterGone`] run by the wait driver. Reports each new phase once.
    ///
    /// Errors: a permanent `GET` error at once; the fourth transient one in a row
    /// (`MAX_POLL_ERRORS` tolerated).
    async fn wait_gone(
        &self,
        ctx: &StepContext,
        client: &TmcClient,
        full_name: &FullName,
        shown: &str,
        uid: Option<&str>,
    ) -> Result<Gone, StepError> {
        let start = Instant::now();
        let mut poll = ClusterPoll::new(client, full_name, self.poll_interval);
        let mut judge = TmcClusterGone::<Cluster>::new(shown, uid);
        drive(
            &mut poll,
            &mut judge,
            &ctx.progress,
            &DriveOptions::tmc(start, MAX_POLL_ERRORS).with_deadline(start + self.detach_timeout),
        )
        .await
    }
}

/// `DELETE` with `force`; 404 (already gone) and 409 (a detach already under way) are not
/// errors: the wait that follows decides.
async fn delete(client: &TmcClient, full_name: &FullName, force: bool) -> Result<(), StepError> {
    match client.delete_cluster(full_name, force).await {
        Ok(()) | Err(TmcError::AlreadyExists { .. } | TmcError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
