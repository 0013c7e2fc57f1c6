//! The orders service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    microcore::telemetry::init_logging();
    microcore::Service::from_env(orders::domain())?
        .run()
        .await?;
    Ok(())
}
