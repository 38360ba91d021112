output "function_arn" {
  description = "ARN of the floe Lambda function."
  value       = module.floe.function_arn
}

output "role_arn" {
  description = "ARN of its execution role."
  value       = module.floe.role_arn
}

output "log_group_name" {
  description = "Its CloudWatch log group."
  value       = module.floe.log_group_name
}

output "event_source_mapping_uuids" {
  description = "UUID of each MSK event source mapping, by topic."
  value       = module.floe.event_source_mapping_uuids
}

output "consumer_group_ids" {
  description = "Consumer group of each mapping, by topic."
  value       = module.floe.consumer_group_ids
}

output "dlq_topics" {
  description = "floe's dead-letter topic of each source topic."
  value       = module.floe.dlq_topics
}

output "lambda_security_group_id" {
  description = "Security group of the function's network interfaces."
  value       = aws_security_group.lambda.id
}
