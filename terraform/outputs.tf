output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "role_name" {
  description = "Name of the execution role (attach extra policies to it, e.g. for a KMS key of an external dead-letter queue)."
  value       = aws_iam_role.this.name
}

output "role_arn" {
  description = "ARN of the execution role."
  value       = aws_iam_role.this.arn
}

output "log_group_name" {
  description = "Name of the function's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of the function's CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.arn
}

output "event_source_mapping_uuids" {
  description = "UUID of each event source mapping, by topic."
  value       = { for t, m in aws_lambda_event_source_mapping.this : t => m.uuid }
}

output "consumer_group_ids" {
  description = "Kafka consumer group of each event source mapping, by topic."
  value       = local.consumer_group_ids
}

output "dlq_topics" {
  description = "floe's dead-letter topic of each source topic (empty unless `dlq_kind` is `kafka`)."
  value       = local.dlq_topics
}

output "dlq_queue_url" {
  description = "URL of floe's SQS dead-letter queue (created or given), or null."
  value       = local.dlq_queue_url
}

output "dlq_queue_arn" {
  description = "ARN of floe's SQS dead-letter queue (created or given), or null."
  value       = local.dlq_queue_arn
}

output "snowflake_private_key_secret_arn" {
  description = "ARN of the secret holding the Snowflake private key (created or given)."
  value       = local.snowflake_secret_arn
}

output "environment_variable_names" {
  description = "Names of the environment variables the function gets (values omitted: `environment` may hold sensitive ones)."
  value       = sort(keys(merge(var.environment, local.floe_environment)))
}
