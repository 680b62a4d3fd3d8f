//! A minimal batchguard worker: counts its records in chunks of 1,000.

use batchguard_worker::{Batch, BatchError};

fn main() -> Result<(), BatchError> {
    let mut batch = Batch::from_env()?;
    while let Some(chunk) = batch.next_chunk(1000) {
        let total: f64 = chunk.range().map(|record| (record % 7) as f64).sum();
        batch.add_sum("total", total)?;
        batch.done(&chunk)?;
    }
    batch.finish()
}
