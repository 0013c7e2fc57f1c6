//! The users service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    microcore::telemetry::init_logging();
    microcore::Service::from_env(users::domain())?.run().await?;
    Ok(())
}
