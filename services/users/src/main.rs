//! The users service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("users");
    microcore::Service::from_env(users::domain())?.run().await?;
    Ok(())
}
