//! TEMPORARY stand-in until the simulator lands.
use std::net::SocketAddr;
pub struct SimOptions {
    pub listen: SocketAddr,
    pub rate: u32,
    pub symbols: Vec<String>,
}
pub struct SimServer {
    addr: SocketAddr,
}
impl SimServer {
    pub fn start(opts: SimOptions) -> std::io::Result<SimServer> {
        Ok(SimServer { addr: opts.listen })
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn stop(self) {}
}
