//! The notifications service process.

// The hot paths allocate many small, short-lived buffers (headers,
// subjects, spans), which mimalloc serves at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("notifications");
    microcore::Service::from_env(notifications::domain())?
        .run()
        .await?;
    Ok(())
}
