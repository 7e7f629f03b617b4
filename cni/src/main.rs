//! `overlayd-cni`: wires the process environment, stdin and stdout to [`overlayd_cni::run`].
fn main() {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let code = overlayd_cni::run(&overlayd_cni::env::ProcessEnv, stdin.lock(), stdout.lock());
    std::process::exit(code);
}
