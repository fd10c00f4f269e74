//! The `aws.remove-subnet-tags` step: after a cluster in an existing (bring-your-own) VPC is
//! deleted, remove the tag key `kubernetes.io/cluster/<cluster_name>` that `aws.preflight`
//! added to its subnets (reference R7; see [`super::preflight`] check 6).
//!
//! * Only that key is removed, with EC2 `DeleteTags` naming the key without a value (so it goes
//!   whatever its value: `shared` from tkgops, `owned` from CAPA).
//! * The role tags `kubernetes.io/role/elb` and `kubernetes.io/role/internal-elb` stay: they
//!   describe the subnet, not the cluster, and the other clusters of the VPC (and their
//!   load-balancer controllers) rely on them.
//! * A new VPC (created by Cluster API) has nothing to untag: CAPA deletes its subnets with the
//!   cluster.
//! * Idempotent: subnets without the key are reported as already untagged, and subnets that no
//!   longer exist (or are no longer in the VPC) are reported, not an error.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, Tag};

use super::error::classify;
use super::preflight::cluster_tag_key;
use tkgops_domain::executor::{ProgressSink, StepError};
use tkgops_domain::output::AwsRemoveSubnetTagsOutput;
use tkgops_domain::step::AwsPreflightInputs;

/// Removes `kubernetes.io/cluster/<inputs.cluster_name>` from every subnet of `inputs` in the
/// existing VPC `inputs.vpc.existing_id` that carries it, using `client` (configured for
/// `inputs.region`), and reports progress to `progress` (reference R7, docs/tanzu-apis.md §5).
///
/// Returns the [`AwsRemoveSubnetTagsOutput`]; with a new VPC it returns at once with no subnets.
/// Errors: [`StepError::Permanent`] for an empty `clusterName` or `region` and for refused EC2
/// calls (e.g. authorization); [`StepError::Transient`] for throttling, 5xx, timeouts and
/// connection errors (see [`super::error`]).
pub async fn run(
    client: &aws_sdk_ec2::Client,
    inputs: &AwsPreflightInputs,
    progress: &ProgressSink,
) -> Result<AwsRemoveSubnetTagsOutput, StepError> {
    let region = inputs.region.trim();
    let cluster = inputs.cluster_name.trim();
    for (field, value) in [("clusterName", cluster), ("region", region)] {
        if value.is_empty() {
            return Err(StepError::Permanent(format!(
                "aws.remove-subnet-tags: input {field} is empty"
            )));
        }
    }
    let key = cluster_tag_key(cluster);
    let mut out = AwsRemoveSubnetTagsOutput {
        region: region.to_string(),
        vpc_id: None,
        tag_key: key.clone(),
        untagged_subnets: Vec::new(),
        already_untagged: Vec::new(),
        missing_subnets: Vec::new(),
        note: String::new(),
    };
    let Some(vpc_id) = inputs
        .vpc
        .existing_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        out.note = "new VPC: Cluster API created the subnets and deletes them with the cluster; \
                    nothing to untag"
            .into();
        progress.report(&out.note);
        return Ok(out);
    };
    out.vpc_id = Some(vpc_id.to_string());

    let mut seen = BTreeSet::new();
    let ids: Vec<String> = inputs
        .subnets
        .iter()
        .flat_map(|s| [&s.private_id, &s.public_id])
        .flatten()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty() && seen.insert(id.clone()))
        .collect();
    if ids.is_empty() {
        out.note = format!("no subnet ids given for VPC {vpc_id}; nothing to untag");
        progress.report(&out.note);
        return Ok(out);
    }
    progress.report(&format!(
        "removing {key} from {} subnet(s) of VPC {vpc_id}",
        ids.len()
    ));

    // The subnet-id filter (unlike SubnetIds) does not fail on ids that no longer exist.
    let mut carrying = BTreeSet::new();
    let mut present = BTreeSet::new();
    let mut pages = client
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("subnet-id")
                .set_values(Some(ids.clone()))
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("DescribeSubnets", region, e))?
    {
        for s in page.subnets() {
            let Some(id) = s.subnet_id() else { continue };
            if s.vpc_id() != Some(vpc_id) {
                continue;
            }
            present.insert(id.to_string());
            if s.tags().iter().any(|t| t.key() == Some(key.as_str())) {
                carrying.insert(id.to_string());
            }
        }
    }
    for id in &ids {
        if !present.contains(id) {
            out.missing_subnets.push(id.clone());
        } else if carrying.contains(id) {
            out.untagged_subnets.push(id.clone());
        } else {
            out.already_untagged.push(id.clone());
        }
    }
    if !out.untagged_subnets.is_empty() {
        client
            .delete_tags()
            .set_resources(Some(out.untagged_subnets.clone()))
            .tags(Tag::builder().key(&key).build())
            .send()
            .await
            .map_err(|e| classify("DeleteTags", region, e))?;
        tracing::info!(region, subnets = ?out.untagged_subnets, tag = %key, "removed the cluster tag");
    }
    if !out.missing_subnets.is_empty() {
        progress.report(&format!(
            "subnet(s) {} no longer exist in VPC {vpc_id}; skipped",
            out.missing_subnets.join(", ")
        ));
    }
    out.note = format!(
        "removed {key} from {} subnet(s), {} already without it, {} missing; the kubernetes.io/role/* \
         tags stay for the other clusters of VPC {vpc_id}",
        out.untagged_subnets.len(),
        out.already_untagged.len(),
        out.missing_subnets.len()
    );
    progress.report(&out.note);
    Ok(out)
}
