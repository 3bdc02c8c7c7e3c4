//! Pods by name: `--pod NAMESPACE/NAME [--pod-container NAME]`. The node's container runtime
//! is asked, through its CRI socket (the kubelet's own interface, so containerd, cri-o and
//! cri-dockerd alike), which sandbox is the pod and which containers are in it; from there the
//! pod is found as `--container` finds a container, by the cgroups and `/proc`: the cgroup the
//! fault is scoped to, the network namespace, the host side of its veth. The runtime is asked
//! once, at inject; what the fault acts on is journaled in its resolved form, so revert, sweep
//! and restart never need the runtime.
//!
//! The pod as a whole is the cgroup the kubelet makes for it (`/kubepods/.../pod<uid>`,
//! `kubepods-...-pod<uid>.slice`), the parent of its containers' cgroups: a container that
//! restarts comes back inside it, still faulted. Its sandbox's own cgroup goes when the pod is
//! deleted (the runtime stops the sandbox; the kubelet removes the pod's cgroup later, if at
//! all), so the engine also watches that one and ends the fault then (`target-gone`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxFilter, PodSandboxState, PodSandboxStateValue, VersionRequest,
};

use super::scope::{self, Container};
use crate::spec::SpecError;
use crate::sys::cgroup::Tree;

/// Where the runtimes listen by default, in the order crictl tries them.
const DEFAULT_ENDPOINTS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];

/// The environment variable crictl and the kubelet's tooling read the endpoint from.
pub const ENDPOINT_ENV: &str = "CONTAINER_RUNTIME_ENDPOINT";

/// How long the runtime has to answer all of one lookup: a wedged runtime must not hold an
/// inject (and the daemon's API) for long.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A pod, as `NAMESPACE/NAME` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses `NAMESPACE/NAME`, each as Kubernetes allows it: a namespace is a DNS label (at most
/// 63 of `a-z 0-9 -`), a pod name a DNS subdomain (at most 253, dots too).
pub fn parse(given: &str) -> Result<PodName, SpecError> {
    let bad = |why: &str| SpecError::BadPod {
        pod: given.to_owned(),
        why: why.to_owned(),
    };
    let (ns, name) = given
        .split_once('/')
        .ok_or_else(|| bad("a pod is named NAMESPACE/NAME (e.g. default/web-0)"))?;
    let label = |s: &str, max: usize, dots: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || (dots && c == b'.')
            })
            && !s.starts_with(['-', '.'])
            && !s.ends_with(['-', '.'])
    };
    if !label(ns, 63, false) {
        return Err(bad(
            "a namespace is at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ));
    }
    if !label(name, 253, true) {
        return Err(bad(
            "a pod name is at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        ));
    }
    Ok(PodName {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    })
}

/// Checks a container's name in a pod spec: a DNS label, at most 63 of `a-z 0-9 -`.
pub fn container_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadPod {
            pod: name.to_owned(),
            why: "a container of a pod is named by at most 63 lowercase letters, digits and '-' (--pod-container)".to_owned(),
        })
    }
}

/// The runtime's socket: the one configured (`unix:///PATH` or a path), else
/// `CONTAINER_RUNTIME_ENDPOINT`, else the first of the runtimes' default sockets that exists.
pub fn endpoint(configured: Option<&str>) -> Result<PathBuf, String> {
    let given = configured
        .map(str::to_owned)
        .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|s| !s.is_empty()));
    if let Some(given) = given {
        let path = given.strip_prefix("unix://").unwrap_or(&given);
        if given.contains("://") && !given.starts_with("unix://") {
            return Err(format!(
                "the CRI endpoint {given:?} is not a unix socket (unix:///PATH)"
            ));
        }
        return Ok(PathBuf::from(path));
    }
    DEFAULT_ENDPOINTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "no container runtime socket here ({}); set [cri] endpoint in the config or {ENDPOINT_ENV}",
                DEFAULT_ENDPOINTS.join(", ")
            )
        })
}

/// What the runtime says of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime and its version, for messages.
    pub runtime: String,
    /// The sandbox's id.
    pub id: String,
    /// Its containers, running or not: (name, id, running).
    pub containers: Vec<(String, String, bool)>,
}

/// Asks the runtime at `socket` for the ready sandbox of `pod` and its containers. A pod the
/// kubelet is re-creating may have a stale sandbox beside the ready one; only a ready one is a
/// pod to fault, the newest if there are several. Blocking: it runs on a thread of its own, so
/// it may be called from the engine's async tasks and from the foreground CLI alike.
pub fn sandbox(socket: &Path, pod: &PodName) -> Result<Sandbox, SpecError> {
    let bad = |why: String| SpecError::BadPod {
        pod: pod.to_string(),
        why,
    };
    let socket = socket.to_owned();
    let wanted = pod.clone();
    let shown = socket.display().to_string();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the CRI client: {e}"))?;
            rt.block_on(async move {
                tokio::time::timeout(TIMEOUT, ask(&socket, &wanted))
                    .await
                    .map_err(|_| {
                        format!(
                            "the container runtime at {} did not answer within {}s",
                            socket.display(),
                            TIMEOUT.as_secs()
                        )
                    })?
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the CRI client panicked".to_owned()))
    })
    .map_err(|why| bad(format!("{why} (CRI endpoint {shown})")))
}

async fn ask(socket: &Path, pod: &PodName) -> Result<Sandbox, String> {
    let path = socket.to_owned();
    // The URI is required by tonic and ignored: every connection goes to the socket.
    let channel = tonic::transport::Endpoint::from_static("http://[::]:0")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to the container runtime: {}", source_of(&e)))?;
    let mut client = RuntimeServiceClient::new(channel);
    let version = client
        .version(VersionRequest {
            version: "v1".to_owned(),
        })
        .await
        .map_err(|e| {
            format!(
                "the container runtime does not speak CRI v1: {}",
                e.message()
            )
        })?
        .into_inner();
    let runtime = format!("{} {}", version.runtime_name, version.runtime_version);
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..PodSandboxFilter::default()
            }),
        })
        .await
        .map_err(|e| format!("{runtime}: ListPodSandbox failed: {}", e.message()))?
        .into_inner()
        .items;
    let ours = sandboxes
        .into_iter()
        .filter(|s| {
            s.metadata
                .as_ref()
                .is_some_and(|m| m.namespace == pod.namespace && m.name == pod.name)
        })
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| format!("no ready pod of that name on this node ({runtime})"))?;
    let containers = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: ours.id.clone(),
                ..ContainerFilter::default()
            }),
        })
        .await
        .map_err(|e| format!("{runtime}: ListContainers failed: {}", e.message()))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| {
            let running = c.state == ContainerState::ContainerRunning as i32;
            (
                c.metadata.map(|m| m.name).unwrap_or_default(),
                c.id,
                running,
            )
        })
        .collect();
    Ok(Sandbox {
        runtime,
        id: ours.id,
        containers,
    })
}

/// The innermost cause of a transport error (tonic wraps the socket's own error).
fn source_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Where a pod fault acts, found in the cgroup tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The cgroup the fault is scoped to (the pod's, or the named container's), with the id of
    /// a container whose processes are in it (to find the network namespace by).
    pub container: Container,
    /// The sandbox's own cgroup, whose removal ends the fault: the pod was deleted.
    pub sandbox_cgroup: Option<String>,
}

/// Finds the cgroups of `sb`: the named container's (`container`), or the pod's, which must be
/// the pod's own (every cgroup in it one of the pod's containers) and not the root.
pub fn scope(
    tree: &Tree,
    pod: &PodName,
    sb: &Sandbox,
    container: Option<&str>,
) -> Result<Scope, SpecError> {
    let bad = |why: String| SpecError::BadPod {
        pod: pod.to_string(),
        why,
    };
    let sandbox = scope::find_container(tree, &sb.id).ok();
    if let Some(name) = container {
        let running: Vec<_> = sb.containers.iter().filter(|c| c.2).collect();
        let Some((_, id, _)) = running.iter().find(|c| c.0 == name) else {
            let names: Vec<&str> = running.iter().map(|c| c.0.as_str()).collect();
            return Err(bad(format!(
                "it has no running container {name:?} (running: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        };
        let c = scope::find_container(tree, id).map_err(|e| bad(e.to_string()))?;
        return Ok(Scope {
            sandbox_cgroup: sandbox.map(|s| s.cgroup),
            container: c,
        });
    }
    // The pod's cgroup is the parent of its sandbox's and containers' (cri-o may run without
    // a sandbox process).
    let mut members: Vec<Container> = sandbox.iter().cloned().collect();
    members.extend(
        sb.containers
            .iter()
            .filter(|c| c.2)
            .filter_map(|c| scope::find_container(tree, &c.1).ok()),
    );
    let first = members.first().ok_or_else(|| {
        bad(format!(
            "neither its sandbox nor any container of it has a cgroup in the cgroup v2 hierarchy ({})",
            tree.label
        ))
    })?;
    let parent = |p: &str| {
        p.rsplit_once('/')
            .map_or(String::new(), |(a, _)| a.to_owned())
    };
    let pod_cgroup = parent(&first.cgroup);
    if let Some(other) = members.iter().find(|m| parent(&m.cgroup) != pod_cgroup) {
        return Err(bad(format!(
            "its containers are in different cgroups ({} and {}): name one with --pod-container",
            first.cgroup, other.cgroup
        )));
    }
    if pod_cgroup.trim_matches('/').is_empty() {
        return Err(bad(
            "its containers are directly below the cgroup root: there is no cgroup of the pod's own; name one with --pod-container".to_owned(),
        ));
    }
    // Only the pod's own: a runtime without a kubelet may put every pod's containers in one
    // directory, and a fault on that would press every pod there.
    let ids: Vec<&str> = std::iter::once(sb.id.as_str())
        .chain(sb.containers.iter().map(|c| c.1.as_str()))
        .collect();
    let parts = crate::target::cgroup_components(&pod_cgroup)?;
    let mut foreign = None;
    tree.walk(&parts, parts.len() + 1, |cg| {
        if cg.depth == parts.len() + 1
            && let Some(id) = scope::container_id_in(cg.name())
            && !ids.contains(&id)
        {
            foreign.get_or_insert_with(|| cg.path.clone());
        }
    })
    .map_err(|e| bad(format!("cannot read its cgroup {pod_cgroup}: {e}")))?;
    if let Some(f) = foreign {
        return Err(bad(format!(
            "its cgroup {pod_cgroup} also holds another pod's container ({f}): the runtime gave the pod no cgroup of its own; name one with --pod-container"
        )));
    }
    Ok(Scope {
        container: Container {
            id: first.id.clone(),
            cgroup: pod_cgroup,
        },
        sandbox_cgroup: sandbox.map(|s| s.cgroup),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_follow_kubernetes() {
        let p = parse("default/web-0").expect("plain");
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("default", "web-0")
        );
        assert_eq!(p.to_string(), "default/web-0");
        parse("kube-system/coredns-5d78c9869d-abcde").expect("generated name");
        parse("ns/web.v2").expect("a pod name may have dots");
        for bad in [
            "", "web", "/web", "ns/", "NS/web", "ns/Web", "ns/-web", "ns/web-", "n.s/web",
            "ns/web/x", "ns/we b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&format!("{}/w", "a".repeat(64))).is_err());
        assert!(parse(&format!("n/{}", "a".repeat(254))).is_err());
    }

    #[test]
    fn the_endpoint_is_a_unix_socket() {
        assert_eq!(
            endpoint(Some("unix:///run/x.sock")).expect("url"),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            endpoint(Some("/run/x.sock")).expect("path"),
            PathBuf::from("/run/x.sock")
        );
        assert!(endpoint(Some("tcp://127.0.0.1:1")).is_err());
    }
}
