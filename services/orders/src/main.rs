//! The orders service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("orders");
    microcore::Service::from_env(orders::domain())?
        .run()
        .await?;
    Ok(())
}
