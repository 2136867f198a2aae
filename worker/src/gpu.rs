//! The GPUs a worker owns, and which attempt holds which, so two steps never share a device.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::task::GpuRequest;

/// Devices of one worker; attempts lease them and give them back when they end.
#[derive(Debug, Default)]
pub struct GpuInventory {
    all: Vec<String>,
    free: Mutex<Vec<String>>,
    released: Notify,
}

/// Devices held by one attempt; dropping the lease returns them.
#[derive(Debug)]
pub struct GpuLease {
    inventory: Arc<GpuInventory>,
    ids: Vec<String>,
}

impl GpuLease {
    /// The leased device ids, in the worker's order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let mut free = self
            .inventory
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        free.append(&mut self.ids);
        let order = &self.inventory.all;
        free.sort_by_key(|id| order.iter().position(|x| x == id));
        drop(free);
        self.inventory.released.notify_waiters();
    }
}

impl GpuInventory {
    /// An inventory of these device ids (as `nvidia-smi` and `CUDA_VISIBLE_DEVICES` number them).
    pub fn new(ids: Vec<String>) -> Arc<GpuInventory> {
        Arc::new(GpuInventory {
            free: Mutex::new(ids.clone()),
            all: ids,
            released: Notify::new(),
        })
    }

    /// Every device of the worker.
    pub fn ids(&self) -> &[String] {
        &self.all
    }

    /// How many devices no attempt holds now: what the worker's heartbeat advertises, so the
    /// scheduler's metrics can show free GPU capacity.
    pub fn free_count(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Leases devices for `request`, waiting while others hold them. Fails at once when the
    /// request can never be met on this worker (more devices than it has, an id it lacks).
    pub async fn acquire(self: &Arc<Self>, request: &GpuRequest) -> Result<GpuLease, String> {
        self.check_possible(request)?;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(ids) = self.try_take(request) {
                return Ok(GpuLease {
                    inventory: self.clone(),
                    ids,
                });
            }
            released.await;
        }
    }

    fn check_possible(&self, request: &GpuRequest) -> Result<(), String> {
        let have = self.all.len();
        match request {
            _ if have == 0 => Err(
                "the step asks for GPUs, but this worker has none (start it with --gpus)".into(),
            ),
            GpuRequest::Count(n) if *n as usize > have => Err(format!(
                "the step asks for {n} GPUs, but this worker has {have}"
            )),
            GpuRequest::Ids(ids) => match ids.iter().find(|id| !self.all.contains(id)) {
                Some(missing) => Err(format!(
                    "the step asks for GPU `{missing}`, but this worker has {}",
                    self.all.join(", ")
                )),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn try_take(&self, request: &GpuRequest) -> Option<Vec<String>> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: Vec<String> = match request {
            GpuRequest::Count(n) => free.iter().take(*n as usize).cloned().collect(),
            GpuRequest::All => self.all.clone(),
            GpuRequest::Ids(ids) => {
                let mut unique = ids.clone();
                unique.dedup();
                unique.sort_by_key(|id| self.all.iter().position(|x| x == id));
                unique.dedup();
                unique
            }
        };
        let count_ok = match request {
            GpuRequest::Count(n) => wanted.len() == *n as usize,
            _ => true,
        };
        if !count_ok || !wanted.iter().all(|id| free.contains(id)) {
            return None;
        }
        free.retain(|id| !wanted.contains(id));
        Some(wanted)
    }
}

/// Reads a `--gpus` value: `auto` asks `nvidia-smi -L`, anything else is a comma-separated list
/// of device ids; empty means none.
pub fn parse_gpus_flag(flag: &str) -> Result<Vec<String>, String> {
    match flag.trim() {
        "" | "none" => Ok(Vec::new()),
        "auto" => detect(),
        list => Ok(list
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect()),
    }
}

/// Device ids from `nvidia-smi -L` (`GPU 0: NVIDIA H200 (UUID: ...)` gives `0`).
pub fn detect() -> Result<Vec<String>, String> {
    let output = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map_err(|e| format!("--gpus auto needs nvidia-smi: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "nvidia-smi -L failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_nvidia_smi(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("GPU "))
        .filter_map(|rest| rest.split(':').next())
        .map(|id| id.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nvidia_smi_listing_gives_device_ids() {
        let text = "GPU 0: NVIDIA H200 (UUID: GPU-1)\nGPU 1: NVIDIA H200 (UUID: GPU-2)\n";
        assert_eq!(parse_nvidia_smi(text), vec!["0", "1"]);
        assert_eq!(parse_gpus_flag("0, 2").unwrap(), vec!["0", "2"]);
        assert!(parse_gpus_flag("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn leases_never_share_a_device_and_waiters_get_released_ones() {
        let gpus = GpuInventory::new(vec!["0".into(), "1".into(), "2".into()]);
        let a = gpus.acquire(&GpuRequest::Count(2)).await.unwrap();
        assert_eq!(a.ids(), ["0", "1"]);
        let b = gpus.acquire(&GpuRequest::Count(1)).await.unwrap();
        assert_eq!(b.ids(), ["2"]);
        let waiting = {
            let gpus = gpus.clone();
            tokio::spawn(async move { gpus.acquire(&GpuRequest::Ids(vec!["1".into()])).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "device 1 is held");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(c.ids(), ["1"]);
    }

    #[tokio::test]
    async fn impossible_requests_fail_at_once() {
        let gpus = GpuInventory::new(vec!["0".into()]);
        let err = gpus.acquire(&GpuRequest::Count(2)).await.unwrap_err();
        assert!(
            err.contains("asks for 2 GPUs, but this worker has 1"),
            "{err}"
        );
        let err = gpus
            .acquire(&GpuRequest::Ids(vec!["7".into()]))
            .await
            .unwrap_err();
        assert!(err.contains("GPU `7`"), "{err}");
        let none = GpuInventory::new(Vec::new());
        let err = none.acquire(&GpuRequest::All).await.unwrap_err();
        assert!(err.contains("has none"), "{err}");
    }
}
