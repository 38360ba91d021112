variable "region" {
  type        = string
  description = "AWS region of the MSK cluster and the function."
  nullable    = false
}

variable "function_name" {
  type        = string
  description = "Name of the Lambda function."
  default     = "floe"
  nullable    = false
}

variable "package_path" {
  type        = string
  description = "Deployment zip built by `make lambda` (path relative to this directory)."
  default     = "../../../target/lambda/arm64/floe-lambda.zip"
  nullable    = false
}

variable "architecture" {
  type        = string
  description = "Architecture of the binary in `package_path`: `arm64` or `x86_64`."
  default     = "arm64"
  nullable    = false

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be \"arm64\" or \"x86_64\"."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the MSK cluster."
  nullable    = false
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets of the function, with a route to the brokers and to HTTPS (NAT gateway or VPC endpoints)."
  nullable    = false
}

variable "msk_cluster_arn" {
  type        = string
  description = "ARN of the MSK cluster (IAM auth enabled)."
  nullable    = false
}

variable "msk_security_group_id" {
  type        = string
  description = "Security group of the MSK brokers, to open port 9098 to the function; null if it is already open."
  default     = null
}

variable "topics" {
  type        = list(string)
  description = "Debezium topics to load into Snowflake."
  nullable    = false
}

variable "on_failure_destination" {
  type        = string
  description = "Where the mapping sends batches it gave up on: `kafka://<topic>`, an SQS queue ARN, an S3 bucket ARN, or null."
  default     = "kafka://floe.failed-batches"
}

variable "snowflake_account" {
  type        = string
  description = "Snowflake account identifier."
  nullable    = false
}

variable "snowflake_user" {
  type        = string
  description = "Snowflake user with the key pair."
  nullable    = false
}

variable "snowflake_database" {
  type        = string
  description = "Target database."
  nullable    = false
}

variable "snowflake_schema" {
  type        = string
  description = "Target schema."
  nullable    = false
}

variable "snowflake_warehouse" {
  type        = string
  description = "Warehouse for the MERGEs, or null for the user's default."
  default     = null
}

variable "snowflake_role" {
  type        = string
  description = "Role, or null for the user's default."
  default     = null
}

variable "snowflake_private_key_secret_arn" {
  type        = string
  description = "ARN of the existing secret whose string is the Snowflake PEM private key."
  nullable    = false
}

variable "secret_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key of that secret, or null for the AWS managed key."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = { project = "floe" }
  nullable    = false
}
