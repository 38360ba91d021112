//! floe as an AWS Lambda behind an MSK event source mapping.
//!
//! Not built yet: the Lambda issue adds the handler (same components and Snowflake
//! sink as the runner, partial batch failures through `batchItemFailures`). Until then
//! this binary says so and exits non-zero, so nobody deploys it by mistake.

fn main() {
    eprintln!("floe-lambda is not implemented yet: use the `floe` runner (see README.md)");
    std::process::exit(2);
}
