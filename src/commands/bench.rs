//! `sweep bench`: throughput numbers printed as a table (filled in below).

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {}

pub async fn bench(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
