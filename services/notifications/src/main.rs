//! The notifications service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("notifications");
    microcore::Service::from_env(notifications::domain())?
        .run()
        .await?;
    Ok(())
}
