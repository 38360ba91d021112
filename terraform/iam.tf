################################################################################
# Execution role: least privilege. Every statement names its resources; the only "*"
# is on the ec2 network interface actions (see VpcNetworkInterfaces).
################################################################################

locals {
  # arn:<partition>:kafka:<region>:<account>:topic/<cluster-name>/<cluster-uuid>/<topic>
  msk_topic_arn_prefix = local.msk_iam ? "${local.msk_arn_prefix}:topic/${local.msk_cluster_path}" : null
  # arn:<partition>:kafka:<region>:<account>:group/<cluster-name>/<cluster-uuid>/<group>
  msk_group_arn_prefix = local.msk_iam ? "${local.msk_arn_prefix}:group/${local.msk_cluster_path}" : null

  msk_source_topic_arns = local.msk_iam ? [for t in var.topics : "${local.msk_topic_arn_prefix}/${t}"] : []
  msk_group_arns        = local.msk_iam ? [for g in values(local.consumer_group_ids) : "${local.msk_group_arn_prefix}/${g}"] : []
  # floe's dead-letter topics, and the mappings' kafka:// on-failure topic.
  msk_floe_dlq_topic_arns = local.msk_iam ? distinct([for t in values(local.dlq_topics) : "${local.msk_topic_arn_prefix}/${t}"]) : []
  msk_dlq_topic_arns = distinct(concat(
    local.msk_floe_dlq_topic_arns,
    local.msk_iam && local.on_failure_topic != null ? ["${local.msk_topic_arn_prefix}/${local.on_failure_topic}"] : [],
  ))

  sqs_send_arns = compact([
    local.dlq_queue_arn,
    local.on_failure_kind == "sqs" ? var.on_failure_destination : null,
  ])

  secret_arns = compact([
    local.snowflake_secret_arn,
    local.scram ? var.kafka_scram_secret_arn : null,
  ])
  # kms:ViaService of Secrets Manager in this region.
  secretsmanager_service = "secretsmanager.${data.aws_region.current.region}.${data.aws_partition.current.dns_suffix}"

  # floe's S3 dead letters: objects below the prefix only.
  dlq_s3_object_arns = var.dlq_kind == "s3" ? ["arn:${data.aws_partition.current.partition}:s3:::${var.dlq_s3_bucket}/${var.dlq_s3_prefix}*"] : []
}

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "LambdaAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = var.function_name
  description          = "Execution role of the floe Lambda ${var.function_name}"
  assume_role_policy   = data.aws_iam_policy_document.assume_role.json
  permissions_boundary = var.role_permissions_boundary_arn
  tags                 = var.tags
}

data "aws_iam_policy_document" "this" {
  #checkov:skip=CKV_AWS_111:the only write actions on "*" are ec2 Create/DeleteNetworkInterface and Assign/UnassignPrivateIpAddresses, which Lambda's VPC networking calls on interfaces it creates, before any ARN is known (as in AWSLambdaVPCAccessExecutionRole)
  #checkov:skip=CKV_AWS_356:same ec2 network interface actions: Lambda creates the interfaces itself, so their ARNs cannot be listed; every other action is scoped to named resources

  # CloudWatch Logs: write to this function's log group only (the module creates it, so
  # no logs:CreateLogGroup).
  statement {
    sid       = "WriteLogs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [aws_cloudwatch_log_group.this.arn, "${aws_cloudwatch_log_group.this.arn}:*"]
  }

  # VPC networking of the function and of the event source mapping (the actions of
  # AWSLambdaVPCAccessExecutionRole, plus DescribeVpcs/DescribeSecurityGroups that a Kafka
  # mapping needs). Resource "*" by AWS design: the Describe* actions support no
  # resource-level permissions, and Lambda creates, attaches and deletes its Hyperplane
  # network interfaces itself, so no interface ARN exists to name beforehand. These ec2
  # actions are the only ones in this policy with resource "*".
  statement {
    sid    = "VpcNetworkInterfaces"
    effect = "Allow"
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:DeleteNetworkInterface",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSubnets",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeVpcs",
      "ec2:AssignPrivateIpAddresses",
      "ec2:UnassignPrivateIpAddresses",
    ]
    resources = ["*"]
  }

  # MSK: the mapping looks up the cluster and its brokers.
  dynamic "statement" {
    for_each = local.is_msk ? [var.msk_cluster_arn] : []
    content {
      sid       = "MskClusterMetadata"
      effect    = "Allow"
      actions   = ["kafka:DescribeCluster", "kafka:DescribeClusterV2", "kafka:GetBootstrapBrokers"]
      resources = [statement.value]
    }
  }

  # MSK IAM auth: connect to this cluster...
  dynamic "statement" {
    for_each = local.msk_iam ? [var.msk_cluster_arn] : []
    content {
      sid       = "MskConnect"
      effect    = "Allow"
      actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeClusterDynamicConfiguration"]
      resources = [statement.value]
    }
  }

  # ...read exactly the consumed topics...
  dynamic "statement" {
    for_each = local.msk_iam ? [local.msk_source_topic_arns] : []
    content {
      sid       = "MskReadTopics"
      effect    = "Allow"
      actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
      resources = statement.value
    }
  }

  # ...through exactly the mappings' consumer groups...
  dynamic "statement" {
    for_each = local.msk_iam ? [local.msk_group_arns] : []
    content {
      sid       = "MskConsumerGroups"
      effect    = "Allow"
      actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
      resources = statement.value
    }
  }

  # ...and write the dead-letter topics: floe's `{topic}.dlq` ones and the mappings'
  # kafka:// on-failure topic.
  dynamic "statement" {
    for_each = length(local.msk_dlq_topic_arns) > 0 ? [local.msk_dlq_topic_arns] : []
    content {
      sid       = "MskWriteDeadLetterTopics"
      effect    = "Allow"
      actions   = ["kafka-cluster:WriteData", "kafka-cluster:DescribeTopic"]
      resources = statement.value
    }
  }

  # floe's dead-letter producer is idempotent (enable.idempotence): with IAM auth that is
  # a cluster-level grant.
  dynamic "statement" {
    for_each = length(local.msk_floe_dlq_topic_arns) > 0 ? [var.msk_cluster_arn] : []
    content {
      sid       = "MskIdempotentWrite"
      effect    = "Allow"
      actions   = ["kafka-cluster:WriteDataIdempotently"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.dlq_create_topics && length(local.msk_floe_dlq_topic_arns) > 0 ? [local.msk_floe_dlq_topic_arns] : []
    content {
      sid       = "MskCreateDeadLetterTopics"
      effect    = "Allow"
      actions   = ["kafka-cluster:CreateTopic"]
      resources = statement.value
    }
  }

  # The Snowflake private key, and the SCRAM credentials (read by the mapping and by
  # floe's dead-letter producer): these secrets and no other.
  statement {
    sid       = "ReadSecrets"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.secret_arns
  }

  # A customer managed key of those secrets, usable through Secrets Manager only.
  dynamic "statement" {
    for_each = var.secret_kms_key_arn == null ? [] : [var.secret_kms_key_arn]
    content {
      sid       = "DecryptSecrets"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = [local.secretsmanager_service]
      }
    }
  }

  # floe's SQS dead-letter queue and/or the mappings' SQS on-failure destination.
  dynamic "statement" {
    for_each = length(local.sqs_send_arns) > 0 ? [local.sqs_send_arns] : []
    content {
      sid       = "SendDeadLetters"
      effect    = "Allow"
      actions   = ["sqs:SendMessage"]
      resources = statement.value
    }
  }

  # floe's S3 dead-letter sink: objects below the prefix only.
  dynamic "statement" {
    for_each = length(local.dlq_s3_object_arns) > 0 ? [local.dlq_s3_object_arns] : []
    content {
      sid       = "PutDeadLetterObjects"
      effect    = "Allow"
      actions   = ["s3:PutObject"]
      resources = statement.value
    }
  }

  # The mappings' S3 on-failure destination (Lambda needs PutObject and ListBucket there).
  dynamic "statement" {
    for_each = local.on_failure_kind == "s3" ? [var.on_failure_destination] : []
    content {
      sid       = "PutOnFailureObjects"
      effect    = "Allow"
      actions   = ["s3:PutObject"]
      resources = ["${statement.value}/*"]
    }
  }

  dynamic "statement" {
    for_each = local.on_failure_kind == "s3" ? [var.on_failure_destination] : []
    content {
      sid       = "ListOnFailureBucket"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "floe-lambda"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.this.json
}
