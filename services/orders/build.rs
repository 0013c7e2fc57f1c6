fn main() {
    microcore_build::discover_plugins();
}
