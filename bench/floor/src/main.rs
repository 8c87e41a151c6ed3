//! Answers every API Gateway event with a fixed 200: nothing can start faster with
//! lambda_runtime, so it is the floor deploy-webhook's init time and memory are compared with.
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn handler(_event: LambdaEvent<Value>) -> Result<Value, Error> {
    Ok(json!({"statusCode": 200, "headers": {"content-type": "application/json"}, "body": "{\"hello\":\"world\"}"}))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
