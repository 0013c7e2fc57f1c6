//! The products service process.

// The hot paths allocate many small, short-lived buffers (headers,
// subjects, spans), which mimalloc serves at a fraction of glibc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = microcore::telemetry::init("products");
    microcore::Service::from_env(products::domain())?
        .run()
        .await?;
    Ok(())
}
