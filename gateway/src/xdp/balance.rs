//! The SO_REUSEPORT balancer: a program in the same object that hands new
//! connections to the workers' listeners in turn.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
};
use gateway_common::map_names;

use super::{OBJECT, XdpError, borrow_map, classify, program_as};

/// The SO_REUSEPORT balancer: the kernel hands new connections to the
/// workers' listeners in turn instead of by a hash of the 4-tuple. The
/// program stays attached to the group for as long as its sockets live.
pub struct Balancer {
    _ebpf: Ebpf,
}

impl Balancer {
    /// Loads the balancer and attaches it to the group of `listeners`
    /// (index = worker).
    pub fn attach<L: std::os::fd::AsRawFd + std::os::fd::AsFd>(
        listeners: &[L],
    ) -> Result<Self, XdpError> {
        use aya::maps::ReusePortSockArray;
        let mut loader = EbpfLoader::new();
        // This instance uses only the balancer's maps: keep the others tiny.
        for name in [
            map_names::VERDICTS,
            map_names::DENY,
            map_names::ALLOW,
            map_names::SYN_EXEMPT,
            map_names::PORTS,
            map_names::SYN_TAT,
        ] {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| classify("loading the XDP object", e))?;
        let mut socks: ReusePortSockArray<&mut MapData> =
            borrow_map(&mut ebpf, map_names::LISTENERS)?;
        for (i, l) in listeners.iter().enumerate() {
            socks
                .set(i as u32, l, 0)
                .map_err(|e| classify("registering a listener", e))?;
        }
        let mut balance: Array<&mut MapData, u64> = borrow_map(&mut ebpf, map_names::BALANCE)?;
        balance
            .set(0, listeners.len() as u64, 0)
            .map_err(|e| classify("writing BALANCE", e))?;
        let prog: &mut aya::programs::SkReuseport =
            program_as(&mut ebpf, gateway_common::BALANCE_PROGRAM_NAME)?;
        prog.load()
            .map_err(|e| classify("verifying the balancer", e))?;
        if let Some(first) = listeners.first() {
            prog.attach(first.as_fd())
                .map_err(|e| classify("attaching the balancer", e))?;
        }
        Ok(Self { _ebpf: ebpf })
    }
}
