//! The sandbox's internal network: creation in a free block of `subnet_pool`, removal.

use super::*;

impl DockerBackend {
    /// Creates the sandbox's internal network, in a free block of `subnet_pool` when one is
    /// configured (a block another network holds is refused by the engine: try another).
    pub(super) async fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<bollard::models::NetworkCreateResponse, BackendError> {
        let request = |ipam: Option<Ipam>| NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            ipam,
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                    "false".to_string(),
                ),
                // No host address on the bridge: the sandbox cannot reach host services, and
                // with `internal` there is no route anywhere else (see the module docs).
                (
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                ),
                // A recognisable host interface (`alk-` + 11 hex), so one host firewall rule
                // (`-i alk-+`) can cover every sandbox bridge; see BRIDGE_PREFIX.
                (
                    "com.docker.network.bridge.name".to_string(),
                    format!("{BRIDGE_PREFIX}{:011x}", rand::random::<u64>() >> 20),
                ),
            ])),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let Some((base, pool_len)) = self.subnet_pool else {
            return self
                .docker
                .create_network(request(None))
                .await
                .map_err(|e| engine("create network", e));
        };
        let len = self.config.subnet_prefix_len;
        let blocks = 1u32 << (len - pool_len);
        let mut last = None;
        for _ in 0..32 {
            let subnet = base + (rand::random_range(0..blocks) << (32 - len));
            let ipam = Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{}/{len}", Ipv4Addr::from(subnet))),
                    gateway: Some(Ipv4Addr::from(subnet + 1).to_string()),
                    ..Default::default()
                }]),
                options: None,
            };
            match self.docker.create_network(request(Some(ipam))).await {
                Ok(created) => return Ok(created),
                Err(e) if e.to_string().contains("overlap") => last = Some(e),
                Err(e) => return Err(engine("create network", e)),
            }
        }
        Err(BackendError::Unavailable(format!(
            "no free /{len} block found in subnet_pool {} after 32 tries (last: {})",
            self.config.subnet_pool.as_deref().unwrap_or_default(),
            last.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// The networks matching a `list` filter (e.g. [`label_filter`]).
    pub(super) async fn networks_with(
        &self,
        filter: &HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::Network>, BackendError> {
        let options = ListNetworksOptionsBuilder::default()
            .filters(filter)
            .build();
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| engine("list networks", e))
    }

    /// Disconnects whatever is still attached (the proxy) and removes the network.
    pub(super) async fn remove_network(&self, network: &str) -> Result<(), BackendError> {
        let members = match self.docker.inspect_network(network, None).await {
            Ok(n) => n.containers.unwrap_or_default(),
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(engine("inspect network", e)),
        };
        for member in members.keys() {
            let req = NetworkDisconnectRequest {
                container: member.clone(),
                force: Some(true),
            };
            match self.docker.disconnect_network(network, req).await {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(engine("disconnect from network", e)),
            }
        }
        match self.docker.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(engine("remove network", e)),
        }
    }
}

/// Parses `a.b.c.d/n` into (network address, n) and checks `n <= block <= 30`.
pub(super) fn parse_pool(pool: &str, block: u8) -> Result<(u32, u8), BackendError> {
    let invalid = |why: &str| BackendError::Invalid(format!("docker subnet_pool `{pool}`: {why}"));
    let (addr, len) = pool
        .split_once('/')
        .ok_or_else(|| invalid("expected a.b.c.d/len"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("bad IPv4 address"))?;
    let len: u8 = len.parse().map_err(|_| invalid("bad prefix length"))?;
    if len > block || block > 30 || len == 0 {
        return Err(invalid(&format!(
            "need 0 < prefix length ({len}) <= subnet_prefix_len ({block}) <= 30"
        )));
    }
    let mask = u32::MAX << (32 - len);
    Ok((u32::from(addr) & mask, len))
}
