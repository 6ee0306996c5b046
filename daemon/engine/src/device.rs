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

/// Opens CUDA device `ordinal`. The libraries are linked (candle hard-wires cudarc's dynamic
/// linking), so the binary only starts where libcuda and cuBLAS load; what can still fail here
/// (no GPU, a stub or too old driver, no free memory) is an error naming the device, and a panic
/// inside the CUDA bindings is caught and reported the same way.
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize, spec: &str) -> Result<Device, DeviceError> {
    let open = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    let why = match open {
        Ok(Ok(d)) => return Ok(d),
        Ok(Err(e)) => e.to_string(),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic in the CUDA bindings".into()),
    };
    Err(DeviceError(format!(
        "`{spec}`: cannot open CUDA device {ordinal} (no GPU or no working NVIDIA driver here?): {why}"
    )))
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
