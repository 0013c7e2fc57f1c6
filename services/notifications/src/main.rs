//! The notifications service process.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    microcore::telemetry::init_logging();
    microcore::Service::from_env(notifications::domain())?
        .run()
        .await?;
    Ok(())
}
