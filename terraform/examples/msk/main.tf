provider "aws" {
  region = var.region
}

data "aws_vpc" "this" {
  id = var.vpc_id
}

# The function's network interfaces: out to the MSK brokers (IAM auth listens on 9098)
# inside the VPC, and to HTTPS (Snowflake, Secrets Manager) through the subnets' NAT
# gateway or VPC endpoints.
resource "aws_security_group" "lambda" {
  name        = "${var.function_name}-lambda"
  description = "floe Lambda: egress to MSK (IAM auth, 9098) and HTTPS (Snowflake, Secrets Manager)"
  vpc_id      = var.vpc_id
  tags        = var.tags

  egress {
    description = "MSK brokers, IAM auth"
    from_port   = 9098
    to_port     = 9098
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }

  egress {
    description = "HTTPS: Snowflake, Secrets Manager"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# Let the function's interfaces reach the brokers (the cluster's own security group must
# also let the cluster's members reach each other, which the event source mapping's
# pollers rely on).
resource "aws_vpc_security_group_ingress_rule" "msk_from_lambda" {
  count = var.msk_security_group_id == null ? 0 : 1

  security_group_id            = var.msk_security_group_id
  description                  = "floe Lambda ${var.function_name} to the brokers (IAM auth)"
  referenced_security_group_id = aws_security_group.lambda.id
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
  tags                         = var.tags
}

module "floe" {
  source = "../.."

  function_name = var.function_name
  package_path  = var.package_path
  architecture  = var.architecture

  subnet_ids         = var.subnet_ids
  security_group_ids = [aws_security_group.lambda.id]

  kafka_kind      = "msk"
  msk_cluster_arn = var.msk_cluster_arn
  topics          = var.topics

  # floe's own dead letters: one `<topic>.dlq` topic per source topic on the same cluster.
  dlq_kind = "kafka"
  # Batches the mapping gives up on (after its retries) go to this topic.
  on_failure_destination = var.on_failure_destination
  maximum_retry_attempts = 10

  snowflake_account                = var.snowflake_account
  snowflake_user                   = var.snowflake_user
  snowflake_database               = var.snowflake_database
  snowflake_schema                 = var.snowflake_schema
  snowflake_warehouse              = var.snowflake_warehouse
  snowflake_role                   = var.snowflake_role
  snowflake_private_key_secret_arn = var.snowflake_private_key_secret_arn
  secret_kms_key_arn               = var.secret_kms_key_arn

  tags = var.tags
}
