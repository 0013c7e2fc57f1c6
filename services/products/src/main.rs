//! The products service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("products");
    microcore::Service::from_env(products::domain())?
        .run()
        .await?;
    Ok(())
}
