//! CustomResourceDefinitions the emulated management cluster serves with a schema.
//!
//! Only the Cluster API `Cluster` (cluster.x-k8s.io/v1beta1) has one: its `openAPIV3Schema`
//! declares the v1beta1 `ClusterSpec` fields of Cluster API v1.4–v1.6 (the releases TKG 2.x
//! ships), field names and nesting as in Cluster API's `api/v1beta1/cluster_types.go`; the
//! descriptions are the emulator's own summaries. `status` keeps unknown fields
//! (`x-kubernetes-preserve-unknown-fields`), a leniency: the simulated controllers write it
//! without validation. The other Cluster API, Tanzu and Carvel types are registered without a
//! CRD object and so without a schema (not validated, not described by `kubectl explain`).

use serde_json::{json, Value};

fn string(d: &str) -> Value {
    json!({"type": "string", "description": d})
}

fn int(d: &str) -> Value {
    json!({"type": "integer", "format": "int32", "description": d})
}

fn int_or_string(d: &str) -> Value {
    json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}], "description": d})
}

fn object(d: &str, props: Value) -> Value {
    json!({"type": "object", "description": d, "properties": props})
}

fn string_map(d: &str) -> Value {
    json!({"type": "object", "description": d, "additionalProperties": {"type": "string"}})
}

fn object_ref(d: &str) -> Value {
    let mut o = object(
        d,
        json!({
            "apiVersion": string("API version of the referenced object."),
            "kind": string("Kind of the referenced object."),
            "name": string("Name of the referenced object."),
            "namespace": string("Namespace of the referenced object."),
            "uid": string("UID of the referenced object."),
            "resourceVersion": string("resourceVersion of the referenced object, if a specific one is meant."),
            "fieldPath": string("A path inside the referenced object, when only part of it is meant."),
        }),
    );
    o["x-kubernetes-map-type"] = json!("atomic");
    o
}

fn object_meta() -> Value {
    object(
        "Labels and annotations the topology controller puts on the objects it creates.",
        json!({
            "labels": string_map("Labels added to the generated objects."),
            "annotations": string_map("Annotations added to the generated objects."),
        }),
    )
}

fn topology_health_check() -> Value {
    object(
        "Overrides of the MachineHealthCheck the ClusterClass defines for these machines.",
        json!({
            "enable": {"type": "boolean", "description": "Whether a MachineHealthCheck is created for these machines."},
            "maxUnhealthy": int_or_string("How many (or what percentage of) machines may be unhealthy before remediation stops."),
            "unhealthyRange": string("A range such as [3-5] of unhealthy machines within which remediation is allowed."),
            "nodeStartupTimeout": string("How long a machine may take to get a Node before it counts as unhealthy."),
            "remediationTemplate": object_ref("The template used to remediate unhealthy machines instead of deleting them."),
            "unhealthyConditions": {
                "type": "array",
                "description": "Node conditions that make a machine unhealthy once they held for their timeout.",
                "items": object("A Node condition with its status and timeout.", json!({
                    "type": string("The Node condition type."),
                    "status": string("The status (True, False, Unknown) that counts as unhealthy."),
                    "timeout": string("How long the condition must hold."),
                })),
            },
        }),
    )
}

fn variable() -> Value {
    let mut v = object(
        "A value for a variable of the ClusterClass.",
        json!({
            "name": string("Name of the ClusterClass variable."),
            "definitionFrom": string("Which patch's definition of the variable the value is for (empty: the shared definition)."),
            "value": {"x-kubernetes-preserve-unknown-fields": true, "description": "The value, of the variable's schema (any JSON)."},
        }),
    );
    v["required"] = json!(["name", "value"]);
    v
}

fn timeouts(props: &mut Value) {
    props["nodeDrainTimeout"] =
        string("How long to drain a node before deleting its machine anyway (0: wait for ever).");
    props["nodeVolumeDetachTimeout"] =
        string("How long to wait for volumes to detach before deleting a machine anyway.");
    props["nodeDeletionTimeout"] =
        string("How long to retry deleting the Node of a deleted machine.");
}

fn topology() -> Value {
    let mut cp = json!({
        "metadata": object_meta(),
        "replicas": int("Number of control plane machines (unset: left to the control plane provider)."),
        "machineHealthCheck": topology_health_check(),
    });
    timeouts(&mut cp);
    let mut md = json!({
        "class": string("Name of the worker class of the ClusterClass this MachineDeployment is built from."),
        "name": string("Name of this MachineDeployment in the topology, unique within the Cluster."),
        "failureDomain": string("Failure domain (availability zone) the machines are placed in."),
        "replicas": int("Number of worker machines (unset: left to autoscaling or defaults)."),
        "minReadySeconds": int("Seconds a new Node must be ready before its machine counts as available."),
        "metadata": object_meta(),
        "machineHealthCheck": topology_health_check(),
        "strategy": object("How machines are replaced when the MachineDeployment changes.", json!({
            "type": string("RollingUpdate or OnDelete."),
            "rollingUpdate": object("Parameters of a rolling update.", json!({
                "maxSurge": int_or_string("How many machines may be created above the desired count during the update."),
                "maxUnavailable": int_or_string("How many machines may be unavailable during the update."),
                "deletePolicy": string("Which machines are deleted first: Random, Newest or Oldest."),
            })),
        })),
        "variables": object("Variable values for this MachineDeployment only.", json!({
            "overrides": {"type": "array", "description": "Values that override the Cluster's variables of the same name.", "items": variable()},
        })),
    });
    timeouts(&mut md);
    let mut md = object("One MachineDeployment of the topology.", md);
    md["required"] = json!(["class", "name"]);
    let mut t = object(
        "The managed topology of the Cluster: the ClusterClass it is built from, the Kubernetes version and the machines. With a topology, the topology controller creates and updates the control plane, infrastructure and MachineDeployments.",
        json!({
            "class": string("Name of the ClusterClass the Cluster is built from."),
            "version": string("Kubernetes version of the Cluster (control plane and workers)."),
            "rolloutAfter": {"type": "string", "format": "date-time", "description": "Machines created before this time are rolled out again."},
            "controlPlane": object("The control plane of the topology.", cp),
            "workers": object("The worker machines of the topology.", json!({
                "machineDeployments": {"type": "array", "description": "The MachineDeployments of the Cluster.", "items": md},
            })),
            "variables": {"type": "array", "description": "Values of the ClusterClass's variables.", "items": variable()},
        }),
    );
    t["required"] = json!(["class", "version"]);
    t
}

fn cluster_schema() -> Value {
    json!({
        "type": "object",
        "description": "Cluster is a Kubernetes cluster managed by Cluster API: its network, control plane endpoint, infrastructure and control plane references, or a managed topology built from a ClusterClass.",
        "properties": {
            "apiVersion": string("The versioned schema of this object (cluster.x-k8s.io/v1beta1)."),
            "kind": string("The kind of this object (Cluster)."),
            "metadata": {"type": "object"},
            "spec": object("The desired state of the Cluster.", json!({
                "paused": {"type": "boolean", "description": "Stops the controllers from reconciling the Cluster and its objects."},
                "clusterNetwork": object("The Cluster's network configuration.", json!({
                    "apiServerPort": int("Port the API server binds to (default 6443)."),
                    "serviceDomain": string("DNS domain of Services."),
                    "pods": object("The ranges Pod IPs are allocated from.", json!({"cidrBlocks": {"type": "array", "items": {"type": "string"}, "description": "CIDR blocks."}})),
                    "services": object("The ranges Service IPs are allocated from.", json!({"cidrBlocks": {"type": "array", "items": {"type": "string"}, "description": "CIDR blocks."}})),
                })),
                "controlPlaneEndpoint": object("The endpoint of the Cluster's API server.", json!({
                    "host": string("Host name or IP of the API server."),
                    "port": int("Port of the API server."),
                })),
                "controlPlaneRef": object_ref("The provider object that provisions the control plane (e.g. a KubeadmControlPlane)."),
                "infrastructureRef": object_ref("The provider object that provisions the Cluster's infrastructure (e.g. an AWSCluster)."),
                "topology": topology(),
            })),
            "status": {
                "type": "object",
                "description": "The observed state of the Cluster, written by the controllers.",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "phase": string("Pending, Provisioning, Provisioned, Deleting, Failed or Unknown."),
                    "infrastructureReady": {"type": "boolean", "description": "Whether the infrastructure is ready."},
                    "controlPlaneReady": {"type": "boolean", "description": "Whether the control plane is ready."},
                    "observedGeneration": {"type": "integer", "format": "int64", "description": "The generation the controllers last acted on."},
                    "failureReason": string("A machine-readable reason for a terminal failure."),
                    "failureMessage": string("A human-readable message for a terminal failure."),
                    "conditions": {"type": "array", "description": "The Cluster's conditions (Ready, ControlPlaneReady, …).", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    "failureDomains": {"type": "object", "description": "Failure domains of the infrastructure.", "x-kubernetes-preserve-unknown-fields": true},
                },
            },
        },
    })
}

/// The `clusters.cluster.x-k8s.io` CustomResourceDefinition (served and stored version
/// v1beta1, namespaced, short name `cl`, category `cluster-api`, status subresource) with the
/// schema described in the module docs.
pub(crate) fn cluster_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusters.cluster.x-k8s.io"},
        "spec": {
            "group": "cluster.x-k8s.io",
            "names": {"kind": "Cluster", "listKind": "ClusterList", "plural": "clusters", "singular": "cluster", "shortNames": ["cl"], "categories": ["cluster-api"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1beta1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": cluster_schema()},
            }],
        },
    })
}
