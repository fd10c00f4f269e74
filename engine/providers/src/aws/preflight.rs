//! The `aws.preflight` step: checks a cluster request against the AWS account and tags the
//! subnets of an existing VPC.
//!
//! Checks, in order (each reported through the step's progress sink):
//! 1. The region exists and is enabled (`DescribeRegions`).
//! 2. Every requested AZ exists in the region and is `available`, and the region has at least 3
//!    available AZs (`DescribeAvailabilityZones`; reference R13, R15).
//! 3. Every instance type exists (`DescribeInstanceTypes`) and is offered in every requested AZ
//!    (`DescribeInstanceTypeOfferings`, location type `availability-zone`); reference R4, TF
//!    `validateAwsInstanceTypes`.
//! 4. Existing VPC: it exists (`DescribeVpcs`), and every subnet id exists, belongs to it and
//!    lies in the AZ the request assigns it (`DescribeSubnets`; TF
//!    `SetAndValidateDefaultAWSVPCConfiguration`, "cannot find subnet(s) … in VPC …"). New VPC:
//!    its CIDR overlaps no existing VPC CIDR of the region, and the new subnets' CIDRs lie inside
//!    it without overlapping each other.
//! 5. `CLUSTER_CIDR` and `SERVICE_CIDR` overlap neither the VPC CIDR(s) nor each other.
//! 6. Existing VPC only: every subnet the cluster uses carries `kubernetes.io/cluster/<name>`
//!    (value `shared`, CAPA's value for bring-your-own subnets), private subnets
//!    `kubernetes.io/role/internal-elb=1`, public ones `kubernetes.io/role/elb=1` (reference R7;
//!    TVS-RA "VPC Architectures"; SIVT terraform). Only missing keys are created (`CreateTags`),
//!    so a second run creates nothing; a key already present with another value is left alone.
//!
//! Invalid configuration fails with [`StepError::Permanent`]; AWS-side trouble is classified by
//! [`super::error::classify`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aws_sdk_ec2::types::{Filter, InstanceType, LocationType, Subnet, Tag, VpcCidrBlockStateCode};
use ipnet::IpNet;

use super::error::{classify, error_code};
use tkgops_domain::executor::{ProgressSink, StepError};
use tkgops_domain::output::AwsPreflightOutput;
use tkgops_domain::step::AwsPreflightInputs;

/// Tag value for the cluster tag on bring-your-own subnets (CAPA's `shared`).
pub const CLUSTER_TAG_VALUE: &str = "shared";
/// Role tag of private subnets (internal load balancers), value `1`.
pub const INTERNAL_ELB_TAG: &str = "kubernetes.io/role/internal-elb";
/// Role tag of public subnets (internet-facing load balancers), value `1`.
pub const ELB_TAG: &str = "kubernetes.io/role/elb";
/// Minimum number of available AZs in the region (reference R13, TVS-AWS step 1).
pub const MIN_REGION_AZS: usize = 3;

/// The tag key marking a subnet as used by cluster `cluster_name`:
/// `kubernetes.io/cluster/<cluster_name>`.
pub fn cluster_tag_key(cluster_name: &str) -> String {
    format!("kubernetes.io/cluster/{cluster_name}")
}

/// Checks the inputs of `aws.preflight` before any call: `clusterName`, `region`, `azs` and
/// `instanceTypes` must not be empty.
///
/// Errors: [`StepError::Permanent`] naming the empty input.
pub fn check_inputs(inputs: &AwsPreflightInputs) -> Result<(), StepError> {
    for (field, empty) in [
        ("clusterName", inputs.cluster_name.trim().is_empty()),
        ("region", inputs.region.trim().is_empty()),
        ("azs", inputs.azs.is_empty()),
        ("instanceTypes", inputs.instance_types.is_empty()),
    ] {
        if empty {
            return Err(StepError::Permanent(format!(
                "aws.preflight: input {field} is empty"
            )));
        }
    }
    Ok(())
}

fn permanent(msg: impl Into<String>) -> StepError {
    StepError::Permanent(msg.into())
}

fn parse_cidr(what: &str, value: &str) -> Result<IpNet, StepError> {
    value
        .trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| permanent(format!("{what} {value:?} is not a valid CIDR")))
}

/// Whether two networks share at least one address (same family only).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The role of a subnet in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Private,
    Public,
}

/// Runs every check and the tagging against `client` (which must be configured for
/// `inputs.region`), reporting one progress line per check to `progress`. `fallback` is a client
/// of another region, used only to tell a non-existent region from an unreachable endpoint
/// (check 1).
///
/// Returns the [`AwsPreflightOutput`]. Errors: [`StepError::Permanent`] naming the failed check and
/// the offending value; [`StepError::Transient`] for throttling, 5xx, timeouts and connection
/// errors (see [`super::error`]).
pub async fn run(
    client: &aws_sdk_ec2::Client,
    fallback: Option<&aws_sdk_ec2::Client>,
    inputs: &AwsPreflightInputs,
    progress: &ProgressSink,
) -> Result<AwsPreflightOutput, StepError> {
    let region = inputs.region.as_str();
    check_inputs(inputs)?;
    let cluster_cidr = parse_cidr("CLUSTER_CIDR", &inputs.cluster_cidr)?;
    let service_cidr = parse_cidr("SERVICE_CIDR", &inputs.service_cidr)?;
    let azs = dedup(&inputs.azs);
    let instance_types = dedup(&inputs.instance_types);

    progress.report(&format!("1/6 checking region {region}"));
    check_region(client, fallback, region).await?;

    progress.report(&format!(
        "2/6 checking availability zones {}",
        azs.join(", ")
    ));
    check_azs(client, region, &azs).await?;

    progress.report(&format!(
        "3/6 checking instance types {}",
        instance_types.join(", ")
    ));
    check_instance_types(client, region, &instance_types, &azs).await?;

    let (vpc_cidrs, subnets) = match inputs
        .vpc
        .existing_id
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(vpc_id) => {
            progress.report(&format!("4/6 checking VPC {vpc_id} and its subnets"));
            let cidrs = describe_vpc_cidrs(client, region, vpc_id).await?;
            let subnets = check_existing_subnets(client, region, vpc_id, inputs, &azs).await?;
            (cidrs, Some((vpc_id, subnets)))
        }
        None => {
            let cidr_text = inputs.vpc.cidr.as_str();
            progress.report(&format!(
                "4/6 checking new VPC CIDR {cidr_text} against existing VPCs"
            ));
            let cidr = parse_cidr("AWS_VPC_CIDR", cidr_text)?;
            check_new_vpc(client, region, &cidr, inputs).await?;
            (vec![cidr], None)
        }
    };

    progress.report("5/6 checking CLUSTER_CIDR and SERVICE_CIDR against the VPC CIDR");
    check_pod_service_cidrs(&cluster_cidr, &service_cidr, &vpc_cidrs)?;

    let mut output = AwsPreflightOutput {
        region: region.to_string(),
        vpc_id: None,
        azs: inputs.azs.clone(),
        instance_types: instance_types.clone(),
        tagged_subnets: Vec::new(),
        already_tagged: Vec::new(),
    };
    match subnets {
        Some((vpc_id, subnets)) => {
            progress.report(&format!(
                "6/6 tagging {} subnet(s) for cluster {}",
                subnets.len(),
                inputs.cluster_name
            ));
            let (tagged, already) =
                tag_subnets(client, region, &inputs.cluster_name, &subnets).await?;
            output.vpc_id = Some(vpc_id.to_string());
            output.tagged_subnets = tagged;
            output.already_tagged = already;
        }
        None => progress.report("6/6 new VPC: Cluster API creates and tags the subnets"),
    }
    Ok(output)
}

fn dedup(items: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    items
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Check 1: the region name is well formed, listed by `DescribeRegions` (all regions) and not
/// `not-opted-in`. If the call in the region itself fails transiently (a region that does not
/// exist has no endpoint), the list is read through `fallback` (another region's client); the
/// original error is returned if that fails too.
async fn check_region(
    client: &aws_sdk_ec2::Client,
    fallback: Option<&aws_sdk_ec2::Client>,
    region: &str,
) -> Result<(), StepError> {
    if !is_region_name(region) {
        return Err(permanent(format!(
            "region check: {region:?} is not a valid AWS region name (e.g. us-west-2)"
        )));
    }
    let out = match client.describe_regions().all_regions(true).send().await {
        Ok(out) => out,
        Err(e) => {
            let err = classify("DescribeRegions", region, e);
            let Some(fallback) = fallback.filter(|_| err.is_transient()) else {
                return Err(err);
            };
            match fallback.describe_regions().all_regions(true).send().await {
                Ok(out)
                    if !out
                        .regions()
                        .iter()
                        .any(|r| r.region_name() == Some(region)) =>
                {
                    out
                }
                _ => return Err(err),
            }
        }
    };
    let found = out
        .regions()
        .iter()
        .find(|r| r.region_name() == Some(region));
    match found {
        None => Err(permanent(format!(
            "region check: region {region} does not exist (DescribeRegions lists {} regions, not this one)",
            out.regions().len()
        ))),
        Some(r) if r.opt_in_status() == Some("not-opted-in") => Err(permanent(format!(
            "region check: region {region} is not enabled for this account (opt-in status not-opted-in)"
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether `s` looks like an AWS region name: lowercase letter groups and a trailing number
/// separated by `-`, e.g. `us-west-2`, `us-gov-east-1`, `ap-southeast-3`.
pub fn is_region_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Check 2: every AZ exists in the region and is available; the region has ≥ 3 available AZs.
async fn check_azs(
    client: &aws_sdk_ec2::Client,
    region: &str,
    azs: &[String],
) -> Result<(), StepError> {
    let out = client
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| classify("DescribeAvailabilityZones", region, e))?;
    let mut states: BTreeMap<String, String> = BTreeMap::new();
    let mut available_azs = 0usize;
    for z in out.availability_zones() {
        let Some(name) = z.zone_name() else { continue };
        let state = z
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        let is_az = z.zone_type().is_none_or(|t| t == "availability-zone");
        if is_az && state == "available" {
            available_azs += 1;
        }
        states.insert(name.to_string(), state);
    }
    for az in azs {
        match states.get(az) {
            None => {
                return Err(permanent(format!(
                    "availability zone check: AZ {az} does not exist in region {region} (region has: {})",
                    states.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
            Some(state) if state != "available" => {
                return Err(permanent(format!(
                    "availability zone check: AZ {az} in region {region} is {state}, not available"
                )))
            }
            Some(_) => {}
        }
    }
    if available_azs < MIN_REGION_AZS {
        return Err(permanent(format!(
            "availability zone check: region {region} has {available_azs} available AZ(s); the reference \
             design needs at least {MIN_REGION_AZS} (R13)"
        )));
    }
    Ok(())
}

/// Check 3: every instance type exists and is offered in every AZ.
async fn check_instance_types(
    client: &aws_sdk_ec2::Client,
    region: &str,
    types: &[String],
    azs: &[String],
) -> Result<(), StepError> {
    for t in types {
        let res = client
            .describe_instance_types()
            .instance_types(InstanceType::from(t.as_str()))
            .send()
            .await;
        let exists = match res {
            Ok(out) => out
                .instance_types()
                .iter()
                .any(|i| i.instance_type().map(|x| x.as_str()) == Some(t.as_str())),
            Err(e) if error_code(&e) == Some("InvalidInstanceType") => false,
            Err(e) => return Err(classify("DescribeInstanceTypes", region, e)),
        };
        if !exists {
            return Err(permanent(format!(
                "instance type check: instance type {t} does not exist in region {region} (DescribeInstanceTypes; R4)"
            )));
        }
    }
    let mut offered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut pages = client
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(
            Filter::builder()
                .name("location")
                .set_values(Some(azs.to_vec()))
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-type")
                .set_values(Some(types.to_vec()))
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("DescribeInstanceTypeOfferings", region, e))?
    {
        for o in page.instance_type_offerings() {
            if let (Some(t), Some(loc)) = (o.instance_type(), o.location()) {
                offered.insert((t.as_str().to_string(), loc.to_string()));
            }
        }
    }
    for t in types {
        let missing: Vec<&str> = azs
            .iter()
            .filter(|az| !offered.contains(&(t.clone(), (*az).clone())))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(permanent(format!(
                "instance type check: instance type {t} is not offered in AZ(s) {} of region {region} \
                 (DescribeInstanceTypeOfferings)",
                missing.join(", ")
            )));
        }
    }
    Ok(())
}

/// Check 4a: the VPC exists; returns its associated IPv4 and IPv6 CIDRs.
async fn describe_vpc_cidrs(
    client: &aws_sdk_ec2::Client,
    region: &str,
    vpc_id: &str,
) -> Result<Vec<IpNet>, StepError> {
    let not_found = || {
        permanent(format!(
            "VPC check: VPC {vpc_id} not found in region {region}"
        ))
    };
    let out = match client.describe_vpcs().vpc_ids(vpc_id).send().await {
        Ok(out) => out,
        Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidVpcID")) => {
            return Err(not_found())
        }
        Err(e) => return Err(classify("DescribeVpcs", region, e)),
    };
    let vpc = out
        .vpcs()
        .iter()
        .find(|v| v.vpc_id() == Some(vpc_id))
        .ok_or_else(not_found)?;
    Ok(vpc_cidrs(vpc))
}

fn vpc_cidrs(vpc: &aws_sdk_ec2::types::Vpc) -> Vec<IpNet> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    let mut push = |s: Option<&str>| {
        if let Some(n) = s.and_then(|s| s.parse::<IpNet>().ok()) {
            if !cidrs.contains(&n) {
                cidrs.push(n);
            }
        }
    };
    push(vpc.cidr_block());
    for a in vpc.cidr_block_association_set() {
        let state = a.cidr_block_state().and_then(|s| s.state());
        if state.is_none_or(|s| *s == VpcCidrBlockStateCode::Associated) {
            push(a.cidr_block());
        }
    }
    for a in vpc.ipv6_cidr_block_association_set() {
        let state = a.ipv6_cidr_block_state().and_then(|s| s.state());
        if state.is_none_or(|s| s.as_str() == "associated") {
            push(a.ipv6_cidr_block());
        }
    }
    cidrs
}

/// Check 4b: every subnet id exists, belongs to `vpc_id` and lies in its assigned AZ. Returns
/// the subnets with their role, in request order.
async fn check_existing_subnets(
    client: &aws_sdk_ec2::Client,
    region: &str,
    vpc_id: &str,
    inputs: &AwsPreflightInputs,
    azs: &[String],
) -> Result<Vec<(Subnet, Role)>, StepError> {
    // (id, assigned AZ, role) in request order.
    let mut wanted: Vec<(String, String, Role)> = Vec::new();
    for s in &inputs.subnets {
        if !azs.contains(&s.az) {
            return Err(permanent(format!(
                "subnet check: subnets are given for AZ {} which is not one of the cluster's AZs ({})",
                s.az,
                azs.join(", ")
            )));
        }
        let private = s
            .private_id
            .as_deref()
            .map(str::trim)
            .filter(|x| !x.is_empty());
        let public = s
            .public_id
            .as_deref()
            .map(str::trim)
            .filter(|x| !x.is_empty());
        let Some(private) = private else {
            return Err(permanent(format!(
                "subnet check: the private subnet id for AZ {} is required with an existing VPC ({vpc_id}) (R15)",
                s.az
            )));
        };
        wanted.push((private.to_string(), s.az.clone(), Role::Private));
        if let Some(public) = public {
            wanted.push((public.to_string(), s.az.clone(), Role::Public));
        }
    }
    for az in azs {
        if !inputs.subnets.iter().any(|s| &s.az == az) {
            return Err(permanent(format!(
                "subnet check: no subnet ids are given for AZ {az} with an existing VPC ({vpc_id}) (R15)"
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for (id, _, _) in &wanted {
        if !seen.insert(id.clone()) {
            return Err(permanent(format!(
                "subnet check: subnet {id} is listed more than once"
            )));
        }
    }

    let ids: Vec<String> = wanted.iter().map(|(id, _, _)| id.clone()).collect();
    let mut found: HashMap<String, Subnet> = HashMap::new();
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
            if let Some(id) = s.subnet_id() {
                found.insert(id.to_string(), s.clone());
            }
        }
    }

    let mut missing = Vec::new();
    let mut elsewhere = Vec::new();
    for id in &ids {
        match found.get(id) {
            None => missing.push(id.clone()),
            Some(s) if s.vpc_id() != Some(vpc_id) => {
                missing.push(id.clone());
                elsewhere.push(format!(
                    "{id} is in {}",
                    s.vpc_id().unwrap_or("another VPC")
                ));
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        let note = if elsewhere.is_empty() {
            String::new()
        } else {
            format!(" ({})", elsewhere.join("; "))
        };
        return Err(permanent(format!(
            "subnet check: cannot find subnet(s) {} in VPC {vpc_id} (region {region}){note}",
            missing.join(", ")
        )));
    }
    let mut result = Vec::new();
    for (id, az, role) in wanted {
        let subnet = found
            .remove(&id)
            .ok_or_else(|| permanent(format!("subnet check: subnet {id} vanished")))?;
        let actual = subnet.availability_zone().unwrap_or("");
        if actual != az {
            return Err(permanent(format!(
                "subnet check: subnet {id} is in AZ {actual}, but the request assigns it to AZ {az}"
            )));
        }
        result.push((subnet, role));
    }
    Ok(result)
}

/// Check 4 (new VPC): the CIDR overlaps no VPC of the region; the subnet CIDRs lie inside it and
/// do not overlap each other; no subnet ids are given.
async fn check_new_vpc(
    client: &aws_sdk_ec2::Client,
    region: &str,
    cidr: &IpNet,
    inputs: &AwsPreflightInputs,
) -> Result<(), StepError> {
    let mut subnet_cidrs: Vec<(String, IpNet)> = Vec::new();
    for s in &inputs.subnets {
        for id in [&s.private_id, &s.public_id].into_iter().flatten() {
            if !id.trim().is_empty() {
                return Err(permanent(format!(
                    "VPC check: subnet id {id} is given but vpc.existingId is empty (a new VPC gets new subnets)"
                )));
            }
        }
        for (what, c) in [("private", &s.private_cidr), ("public", &s.public_cidr)] {
            let Some(c) = c.as_deref().filter(|c| !c.trim().is_empty()) else {
                continue;
            };
            let label = format!("{what} subnet CIDR of AZ {}", s.az);
            let net = parse_cidr(&label, c)?;
            if !cidr.contains(&net) {
                return Err(permanent(format!(
                    "VPC check: {label} {net} is not inside the VPC CIDR {cidr}"
                )));
            }
            if let Some((other, _)) = subnet_cidrs.iter().find(|(_, o)| overlaps(o, &net)) {
                return Err(permanent(format!(
                    "VPC check: {label} {net} overlaps the {other}"
                )));
            }
            subnet_cidrs.push((label, net));
        }
    }
    let mut pages = client.describe_vpcs().into_paginator().send();
    while let Some(page) = pages
        .try_next()
        .await
        .map_err(|e| classify("DescribeVpcs", region, e))?
    {
        for vpc in page.vpcs() {
            if let Some(existing) = vpc_cidrs(vpc).into_iter().find(|c| overlaps(c, cidr)) {
                return Err(permanent(format!(
                    "VPC check: new VPC CIDR {cidr} overlaps VPC {} ({existing}) in region {region}",
                    vpc.vpc_id().unwrap_or("?")
                )));
            }
        }
    }
    Ok(())
}

/// Check 5: pods and services do not collide with the node network or each other.
fn check_pod_service_cidrs(
    cluster: &IpNet,
    service: &IpNet,
    vpc_cidrs: &[IpNet],
) -> Result<(), StepError> {
    for (name, net) in [("CLUSTER_CIDR", cluster), ("SERVICE_CIDR", service)] {
        if let Some(v) = vpc_cidrs.iter().find(|v| overlaps(v, net)) {
            return Err(permanent(format!(
                "CIDR check: {name} {net} overlaps the VPC CIDR {v}"
            )));
        }
    }
    if overlaps(cluster, service) {
        return Err(permanent(format!(
            "CIDR check: CLUSTER_CIDR {cluster} overlaps SERVICE_CIDR {service}"
        )));
    }
    Ok(())
}

/// Check 6: creates the missing tags; returns (subnets tagged now, subnets already tagged).
async fn tag_subnets(
    client: &aws_sdk_ec2::Client,
    region: &str,
    cluster_name: &str,
    subnets: &[(Subnet, Role)],
) -> Result<(Vec<String>, Vec<String>), StepError> {
    let cluster_key = cluster_tag_key(cluster_name);
    let mut tagged = Vec::new();
    let mut already = Vec::new();
    for (subnet, role) in subnets {
        let id = subnet.subnet_id().unwrap_or_default();
        let present: BTreeSet<&str> = subnet.tags().iter().filter_map(|t| t.key()).collect();
        let role_key = match role {
            Role::Private => INTERNAL_ELB_TAG,
            Role::Public => ELB_TAG,
        };
        let missing: Vec<Tag> = [(cluster_key.as_str(), CLUSTER_TAG_VALUE), (role_key, "1")]
            .into_iter()
            .filter(|(k, _)| !present.contains(k))
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        if missing.is_empty() {
            already.push(id.to_string());
            continue;
        }
        let keys: Vec<String> = missing
            .iter()
            .filter_map(|t| t.key().map(str::to_string))
            .collect();
        client
            .create_tags()
            .resources(id)
            .set_tags(Some(missing))
            .send()
            .await
            .map_err(|e| classify("CreateTags", region, e))?;
        tracing::info!(subnet = id, region, tags = ?keys, "tagged subnet");
        tagged.push(id.to_string());
    }
    Ok((tagged, already))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_symmetric_and_family_aware() {
        let a: IpNet = "10.0.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        let b: IpNet = "10.0.128.0/20".parse().unwrap_or_else(|_| unreachable!());
        let c: IpNet = "10.1.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        let v6: IpNet = "::/0".parse().unwrap_or_else(|_| unreachable!());
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
        assert!(!overlaps(&a, &v6));
    }

    #[test]
    fn inputs_with_empty_fields_are_refused() {
        let v = serde_json::json!({"clusterName":"c","region":"us-west-2","azs":["us-west-2a"],
            "vpc":{"existingId":null,"cidr":"10.0.0.0/16"},"subnets":[],"instanceTypes":["t3.large"],
            "clusterCidr":"100.96.0.0/11","serviceCidr":"100.64.0.0/13"});
        let ok: AwsPreflightInputs = serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"));
        assert!(check_inputs(&ok).is_ok());
        let mut bad = ok.clone();
        bad.azs.clear();
        assert!(matches!(check_inputs(&bad), Err(StepError::Permanent(m)) if m.contains("azs")));
    }

    #[test]
    fn region_names() {
        for ok in [
            "us-west-2",
            "us-gov-east-1",
            "ap-southeast-3",
            "eu-central-1",
        ] {
            assert!(is_region_name(ok), "{ok}");
        }
        for bad in [
            "",
            "us-west",
            "US-WEST-2",
            "us_west_2",
            "us-west-2a",
            "-west-2",
        ] {
            assert!(!is_region_name(bad), "{bad}");
        }
    }

    #[test]
    fn cidr_check_names_the_variable() {
        let vpc: IpNet = "100.64.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        let cl: IpNet = "100.96.0.0/11".parse().unwrap_or_else(|_| unreachable!());
        let sv: IpNet = "100.64.0.0/13".parse().unwrap_or_else(|_| unreachable!());
        let err = check_pod_service_cidrs(&cl, &sv, &[vpc]).err();
        assert!(matches!(err, Some(StepError::Permanent(m)) if m.contains("SERVICE_CIDR")));
    }
}
