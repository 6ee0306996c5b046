//! `--device cpu|cuda[:N]`: CUDA only when built with the `cuda` feature. The one parser of
//! device names; the encoders and the daemon call it too.
use candle_core::Device;

/// A device name that cannot be opened, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// Parse a device name. `cuda` means `cuda:0`.
pub fn parse_device(spec: &str) -> Result<Device, DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let bad = || DeviceError(format!("`{spec}`: expected cpu, cuda or cuda:N"));
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(bad)?,
        None => return Err(bad()),
    };
    cuda_device(ordinal, spec)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize, spec: &str) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|e| DeviceError(format!("`{spec}`: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize, spec: &str) -> Result<Device, DeviceError> {
    Err(DeviceError(format!(
        "`{spec}`: this build has no CUDA support; rebuild with `cargo build --features cuda`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
