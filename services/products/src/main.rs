//! The products service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    microcore::telemetry::init_logging();
    microcore::Service::from_env(products::domain())?
        .run()
        .await?;
    Ok(())
}
