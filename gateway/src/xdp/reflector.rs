//! The object's reflector program, for tests and benchmarks only.

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions},
};

use super::{OBJECT, XdpError, classify, named_program, os_error};

/// The object's reflector program (`XDP_TX` for every frame), for tests
/// and benchmarks only: the gateway never attaches it.
pub struct Reflector {
    ebpf: Ebpf,
}

impl Reflector {
    /// Loads and verifies the reflector.
    pub fn load() -> Result<Self, XdpError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| classify("loading the XDP object", e))?;
        named_program(&mut ebpf, gateway_common::TX_PROGRAM_NAME)?
            .load()
            .map_err(|e| classify("verifying the reflector", e))?;
        Ok(Self { ebpf })
    }

    /// Sends `frame` out of interface `ifindex` (in the caller's network
    /// namespace) `repeat` times as XDP frames: BPF_PROG_TEST_RUN in
    /// live-frames mode, the kernel's own packet generator.
    pub fn transmit(&mut self, ifindex: u32, frame: &[u8], repeat: u32) -> Result<(), XdpError> {
        let prog = named_program(&mut self.ebpf, gateway_common::TX_PROGRAM_NAME)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = aya::programs::TestRunAttrs::new().xdp_live_frames(64);
        prog.test_run(opts).map_err(|e| match os_error(&e) {
            // The program loaded a moment ago: not a missing privilege to
            // load, but something live frames need beyond it.
            Some(libc::EPERM | libc::EACCES) => {
                XdpError::FacilityRefused(format!("live-frames BPF_PROG_TEST_RUN: {e}"))
            }
            _ => classify("live-frames BPF_PROG_TEST_RUN", e),
        })?;
        Ok(())
    }
}
