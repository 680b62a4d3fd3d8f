//! The Python worker SDK's own tests, run as part of `cargo test`.

use std::process::Command;

#[test]
fn python_sdk_tests_pass() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "tests"])
        .current_dir(dir)
        .output()
        .expect("python3 on PATH");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named pytest"),
        "pytest is missing: pip install pytest\n{text}"
    );
    assert!(out.status.success(), "the Python SDK tests failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
}

/// The message the Python SDK writes is one the operator reads, checkpoint included.
#[test]
fn python_worker_output_is_read_by_the_operator() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/python");
    let log = std::env::temp_dir().join(format!("bg-sdk-{}", std::process::id()));
    let mut worker = Command::new("python3")
        .arg("examples/payroll_worker.py")
        .current_dir(dir)
        .env("PYTHONPATH", dir)
        .env("BATCHGUARD_RUN", "payroll")
        .env("BATCHGUARD_RANGE_START", "5000")
        .env("BATCHGUARD_RANGE_END", "10000")
        .env("BATCHGUARD_TERMINATION_LOG", &log)
        .env("EXAMPLE_CHUNK", "1000")
        .env("EXAMPLE_SECONDS_PER_CHUNK", "0.4")
        .spawn()
        .expect("python3 on PATH");
    // A drain, as the memory guard sends it, once the worker listens for it (a `python3` that
    // is a pyenv shim can take more than a second to get there on a busy machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !catches_sigterm(worker.id()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    let message = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let range = batchguard::api::RecordRange::new(5000, 10000);
    let result = batchguard::worker::WorkerResult::parse(&message, range)
        .expect("a result the operator accepts");
    let resume = result.resume_from.expect("a checkpoint after SIGTERM");
    assert!(resume > 5000 && resume < 10000, "{message}");
    assert_eq!(result.done(range).len(), result.records);
    assert_eq!(result.outputs.len() as u64, result.records / 1000);
    assert!(result.sums["gross_pay"] > 0.0);
}

/// Whether process `pid` has a SIGTERM handler (bit 15 of SigCgt in /proc/PID/status).
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << 14) != 0)
}
