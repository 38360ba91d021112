data "aws_partition" "current" {}

data "aws_region" "current" {}

locals {
  is_msk     = var.kafka_kind == "msk"
  kafka_auth = coalesce(var.kafka_auth, local.is_msk ? "msk-iam" : "scram-sha-512")
  # MSK with IAM auth: the role itself is the Kafka principal, so it needs kafka-cluster:* grants.
  msk_iam = local.is_msk && local.kafka_auth == "msk-iam"
  scram   = local.kafka_auth == "scram-sha-512"

  # arn:<partition>:kafka:<region>:<account>:cluster/<cluster-name>/<cluster-uuid> ->
  # "arn:<partition>:kafka:<region>:<account>" and "<cluster-name>/<cluster-uuid>", from
  # which the topic and group ARNs of the kafka-cluster:* grants are built.
  msk_arn_parts    = local.is_msk ? try(regex("^(arn:[^:]+:kafka:[^:]+:[0-9]+):cluster/(.+)$", var.msk_cluster_arn), null) : null
  msk_arn_prefix   = try(local.msk_arn_parts[0], null)
  msk_cluster_path = try(local.msk_arn_parts[1], null)

  consumer_group_prefix = coalesce(var.consumer_group_id_prefix, var.function_name)
  # One consumer group per mapping: Lambda wants a group ID unique among all Kafka mappings.
  consumer_group_ids = { for t in var.topics : t => "${local.consumer_group_prefix}-${t}" }

  # floe's dead-letter topics, one per source topic ({topic} -> the topic).
  dlq_topics = var.dlq_kind == "kafka" ? { for t in var.topics : t => replace(var.dlq_topic, "{topic}", t) } : {}

  on_failure_kind  = var.on_failure_destination == null ? null : (startswith(var.on_failure_destination, "kafka://") ? "kafka" : split(":", var.on_failure_destination)[2])
  on_failure_topic = local.on_failure_kind == "kafka" ? trimprefix(var.on_failure_destination, "kafka://") : null

  snowflake_secret_arn = var.create_snowflake_secret ? aws_secretsmanager_secret.snowflake[0].arn : var.snowflake_private_key_secret_arn

  dlq_queue_arn = var.dlq_kind != "sqs" ? null : (var.create_dlq_queue ? aws_sqs_queue.dlq[0].arn : var.dlq_sqs_queue_arn)
  # arn:<partition>:sqs:<region>:<account>:<name> -> https://sqs.<region>.<dns suffix>/<account>/<name>
  dlq_queue_url = var.dlq_kind != "sqs" ? null : (var.create_dlq_queue ? aws_sqs_queue.dlq[0].url : try(format(
    "https://sqs.%s.%s/%s/%s",
    split(":", var.dlq_sqs_queue_arn)[3], data.aws_partition.current.dns_suffix,
    split(":", var.dlq_sqs_queue_arn)[4], split(":", var.dlq_sqs_queue_arn)[5],
  ), null))

  # The environment contract of the floe Lambda (see README.md); unset optional ones are
  # left out. The ARN and URL of resources created here stay outside the null filter, so
  # that while they are unknown (first plan) the other values still show.
  floe_environment = merge(
    { for k, v in {
      FLOE__SINK__SNOWFLAKE__ACCOUNT_URL = var.snowflake_account_url
      FLOE__SINK__SNOWFLAKE__ACCOUNT     = var.snowflake_account
      FLOE__SINK__SNOWFLAKE__USER        = var.snowflake_user
      FLOE__SINK__SNOWFLAKE__DATABASE    = var.snowflake_database
      FLOE__SINK__SNOWFLAKE__SCHEMA      = var.snowflake_schema
      FLOE__SINK__SNOWFLAKE__WAREHOUSE   = var.snowflake_warehouse
      FLOE__SINK__SNOWFLAKE__ROLE        = var.snowflake_role
      FLOE__DLQ__KIND                    = var.dlq_kind
      FLOE__DLQ__TOPIC                   = var.dlq_kind == "kafka" ? var.dlq_topic : null
      FLOE__DLQ__S3_BUCKET               = var.dlq_kind == "s3" ? var.dlq_s3_bucket : null
      FLOE__DLQ__S3_PREFIX               = var.dlq_kind == "s3" ? var.dlq_s3_prefix : null
      FLOE__LAMBDA__KAFKA_AUTH           = local.kafka_auth
      FLOE_KAFKA_SCRAM_SECRET_ARN        = local.scram ? var.kafka_scram_secret_arn : null
      RUST_LOG                           = var.log_level
    } : k => v if v != null },
    { FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN = local.snowflake_secret_arn },
    var.dlq_kind == "sqs" ? { FLOE__DLQ__SQS_QUEUE_URL = local.dlq_queue_url } : {},
  )

  # Self-managed Kafka: the mapping reaches the brokers through the function's subnets
  # and security groups and logs in with the SCRAM secret. MSK: the cluster ARN gives the
  # network; only SCRAM auth needs an entry.
  source_access_configurations = concat(
    local.scram ? [{ type = "SASL_SCRAM_512_AUTH", uri = var.kafka_scram_secret_arn }] : [],
    local.is_msk ? [] : [for s in var.subnet_ids : { type = "VPC_SUBNET", uri = "subnet:${s}" }],
    local.is_msk ? [] : [for g in var.security_group_ids : { type = "VPC_SECURITY_GROUP", uri = "security_group:${g}" }],
  )
}

################################################################################
# Lambda function
################################################################################

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:X-Ray needs xray:PutTraceSegments on "*", which this module's least-privilege policy does not grant; floe exports OpenTelemetry traces itself
  #checkov:skip=CKV_AWS_116:a dead-letter queue only applies to asynchronous invocations; an event source mapping invokes synchronously and failures go to on_failure_destination and floe's own dead-letter sink
  #checkov:skip=CKV_AWS_173:the environment holds names and ARNs only (the Snowflake key is in Secrets Manager), encrypted at rest with the Lambda service key
  function_name = var.function_name
  description   = var.description
  role          = aws_iam_role.this.arn

  runtime       = "provided.al2023"
  handler       = "bootstrap"
  architectures = [var.architecture]
  memory_size   = var.memory_size
  timeout       = var.timeout

  filename         = var.package_path
  source_code_hash = filebase64sha256(var.package_path)

  reserved_concurrent_executions = var.reserved_concurrent_executions
  code_signing_config_arn        = var.code_signing_config_arn

  environment {
    variables = merge(var.environment, local.floe_environment)
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = !local.is_msk || var.msk_cluster_arn != null
      error_message = "kafka_kind = \"msk\" needs msk_cluster_arn."
    }
    precondition {
      condition     = local.is_msk || length(var.kafka_bootstrap_servers) > 0
      error_message = "kafka_kind = \"self-managed\" needs kafka_bootstrap_servers."
    }
    precondition {
      condition     = local.is_msk || local.kafka_auth == "scram-sha-512"
      error_message = "A self-managed cluster supports kafka_auth = \"scram-sha-512\" only (msk-iam is MSK's)."
    }
    precondition {
      condition     = !local.scram || var.kafka_scram_secret_arn != null
      error_message = "kafka_auth = \"scram-sha-512\" needs kafka_scram_secret_arn."
    }
    precondition {
      condition     = var.minimum_pollers <= var.maximum_pollers
      error_message = "minimum_pollers must not exceed maximum_pollers."
    }
    precondition {
      condition     = var.create_snowflake_secret ? (var.snowflake_private_key_pem != null && var.snowflake_private_key_secret_arn == null) : var.snowflake_private_key_secret_arn != null
      error_message = "Set either create_snowflake_secret = true with snowflake_private_key_pem, or snowflake_private_key_secret_arn."
    }
    precondition {
      condition     = var.dlq_kind != "sqs" || (var.create_dlq_queue != (var.dlq_sqs_queue_arn != null))
      error_message = "dlq_kind = \"sqs\" needs exactly one of create_dlq_queue = true or dlq_sqs_queue_arn."
    }
    precondition {
      condition     = var.dlq_kind != "s3" || var.dlq_s3_bucket != null
      error_message = "dlq_kind = \"s3\" needs dlq_s3_bucket."
    }
    precondition {
      condition     = !var.dlq_create_topics || (var.dlq_kind == "kafka" && local.msk_iam)
      error_message = "dlq_create_topics needs dlq_kind = \"kafka\" on MSK with kafka_auth = \"msk-iam\" (it is an IAM grant)."
    }
    precondition {
      condition     = alltrue([for g in values(local.consumer_group_ids) : length(g) <= 200])
      error_message = "A consumer group ID (<consumer_group_id_prefix>-<topic>) is longer than 200 characters: shorten consumer_group_id_prefix."
    }
    precondition {
      condition     = local.on_failure_topic == null || !contains(var.topics, coalesce(local.on_failure_topic, "-"))
      error_message = "The kafka:// on-failure destination must not be one of the consumed topics."
    }
  }

  # The role must hold the VPC permissions before the function is created, the log group
  # must exist before the first invocation would create it without a retention, and the
  # created secret must hold the key before the function reads it.
  depends_on = [
    aws_iam_role_policy.this,
    aws_cloudwatch_log_group.this,
    aws_secretsmanager_secret_version.snowflake,
  ]
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_338:retention is the user's choice (log_retention_days, 30 days by default for operational logs); raise it where compliance asks for a year
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

################################################################################
# Event source mappings: one per topic
################################################################################

resource "aws_lambda_event_source_mapping" "this" {
  for_each = toset(var.topics)

  function_name = aws_lambda_function.this.arn
  topics        = [each.value]
  enabled       = var.event_source_mapping_enabled

  # MSK: the cluster ARN; self-managed: the brokers (below).
  event_source_arn = local.is_msk ? var.msk_cluster_arn : null

  starting_position                  = var.starting_position
  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.maximum_batching_window_in_seconds

  # floe answers {"batchItemFailures": [...]} naming the first record of each partition
  # it could not load; Lambda then retries from there instead of the whole batch.
  function_response_types = ["ReportBatchItemFailures"]

  bisect_batch_on_function_error = var.bisect_batch_on_function_error
  maximum_retry_attempts         = var.maximum_retry_attempts
  maximum_record_age_in_seconds  = var.maximum_record_age_in_seconds

  # Provisioned mode: required for ReportBatchItemFailures and the retry settings on Kafka.
  provisioned_poller_config {
    minimum_pollers = var.minimum_pollers
    maximum_pollers = var.maximum_pollers
  }

  dynamic "amazon_managed_kafka_event_source_config" {
    for_each = local.is_msk ? [local.consumer_group_ids[each.value]] : []
    content {
      consumer_group_id = amazon_managed_kafka_event_source_config.value
    }
  }

  dynamic "self_managed_event_source" {
    for_each = local.is_msk ? [] : [join(",", var.kafka_bootstrap_servers)]
    content {
      endpoints = {
        KAFKA_BOOTSTRAP_SERVERS = self_managed_event_source.value
      }
    }
  }

  dynamic "self_managed_kafka_event_source_config" {
    for_each = local.is_msk ? [] : [local.consumer_group_ids[each.value]]
    content {
      consumer_group_id = self_managed_kafka_event_source_config.value
    }
  }

  dynamic "source_access_configuration" {
    for_each = local.source_access_configurations
    content {
      type = source_access_configuration.value.type
      uri  = source_access_configuration.value.uri
    }
  }

  dynamic "destination_config" {
    for_each = var.on_failure_destination == null ? [] : [var.on_failure_destination]
    content {
      on_failure {
        destination_arn = destination_config.value
      }
    }
  }

  tags = var.tags

  # The mapping checks the role's Kafka, network and destination permissions when it starts.
  depends_on = [aws_iam_role_policy.this]
}

################################################################################
# Snowflake private key secret (optional)
################################################################################

resource "aws_secretsmanager_secret" "snowflake" {
  #checkov:skip=CKV2_AWS_57:a key-pair secret is rotated by registering a new public key on the Snowflake user (RSA_PUBLIC_KEY_2) and updating the secret, not by a rotation Lambda
  count = var.create_snowflake_secret ? 1 : 0

  name                    = coalesce(var.snowflake_secret_name, "floe/${var.function_name}/snowflake-private-key")
  description             = "PEM private key of Snowflake user ${var.snowflake_user}, read by the ${var.function_name} Lambda"
  kms_key_id              = var.secret_kms_key_arn
  recovery_window_in_days = var.snowflake_secret_recovery_window_in_days
  tags                    = var.tags
}

resource "aws_secretsmanager_secret_version" "snowflake" {
  count = var.create_snowflake_secret ? 1 : 0

  secret_id     = aws_secretsmanager_secret.snowflake[0].id
  secret_string = var.snowflake_private_key_pem
}

################################################################################
# Dead-letter queue (optional)
################################################################################

resource "aws_sqs_queue" "dlq" {
  count = var.create_dlq_queue ? 1 : 0

  name                      = coalesce(var.dlq_queue_name, "${var.function_name}-dlq")
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}
