################################################################################
# Function
################################################################################

variable "function_name" {
  type        = string
  description = "Name of the Lambda function; also names the execution role, the log group `/aws/lambda/<name>` and, by default, the consumer groups and the created secret and queue."
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.function_name))
    error_message = "function_name must be 1 to 64 letters, digits, hyphens or underscores."
  }
}

variable "description" {
  type        = string
  description = "Description of the Lambda function."
  default     = "floe: PostgreSQL change events (Debezium, via Kafka) into Snowflake"
  nullable    = false

  validation {
    condition     = length(var.description) <= 256
    error_message = "description must be at most 256 characters."
  }
}

variable "package_path" {
  type        = string
  description = "Path of the deployment zip holding the `bootstrap` binary, as built by `make lambda` (`target/lambda/<arch>/floe-lambda.zip`); its architecture must match `architecture`."
  nullable    = false

  validation {
    condition     = endswith(var.package_path, ".zip")
    error_message = "package_path must name a .zip file (make lambda writes target/lambda/<arch>/floe-lambda.zip)."
  }
}

variable "architecture" {
  type        = string
  description = "Instruction set of the function: `arm64` (Graviton, the default) or `x86_64`. Must match the binary in `package_path`."
  default     = "arm64"
  nullable    = false

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be \"arm64\" or \"x86_64\"."
  }
}

variable "memory_size" {
  type        = number
  description = "Memory of the function in MB (128-10240); CPU grows with it."
  default     = 1024
  nullable    = false

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout" {
  type        = number
  description = "Longest run of one invocation in seconds (1-900): one batch, including its Snowflake MERGEs and dead-letter writes."
  default     = 300
  nullable    = false

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 900 && floor(var.timeout) == var.timeout
    error_message = "timeout must be a whole number of seconds between 1 and 900."
  }
}

variable "reserved_concurrent_executions" {
  type        = number
  description = "Concurrency reserved for the function; null leaves it unreserved (the provisioned pollers already bound it), 0 stops all invocations."
  default     = null

  validation {
    condition     = var.reserved_concurrent_executions == null || try(var.reserved_concurrent_executions >= 0 && floor(var.reserved_concurrent_executions) == var.reserved_concurrent_executions, false)
    error_message = "reserved_concurrent_executions must be null or a whole number >= 0."
  }
}

variable "code_signing_config_arn" {
  type        = string
  description = "ARN of a Lambda code signing configuration to enforce on the package, or null."
  default     = null

  validation {
    condition     = var.code_signing_config_arn == null || can(regex("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:code-signing-config:csc-[a-z0-9]{17}$", var.code_signing_config_arn))
    error_message = "code_signing_config_arn must be a Lambda code signing config ARN."
  }
}

variable "environment" {
  type        = map(string)
  description = "Extra environment variables of the function (e.g. other `FLOE__SECTION__KEY` settings). They may not set the variables this module manages (see the environment contract in the README)."
  default     = {}
  nullable    = false

  validation {
    condition = length(setintersection(keys(var.environment), [
      "FLOE__SINK__SNOWFLAKE__ACCOUNT_URL", "FLOE__SINK__SNOWFLAKE__ACCOUNT", "FLOE__SINK__SNOWFLAKE__USER",
      "FLOE__SINK__SNOWFLAKE__DATABASE", "FLOE__SINK__SNOWFLAKE__SCHEMA", "FLOE__SINK__SNOWFLAKE__WAREHOUSE",
      "FLOE__SINK__SNOWFLAKE__ROLE", "FLOE_SNOWFLAKE_PRIVATE_KEY_SECRET_ARN", "FLOE__DLQ__KIND", "FLOE__DLQ__TOPIC",
      "FLOE__DLQ__SQS_QUEUE_URL", "FLOE__DLQ__S3_BUCKET", "FLOE__DLQ__S3_PREFIX", "FLOE__LAMBDA__KAFKA_AUTH",
      "FLOE_KAFKA_SCRAM_SECRET_ARN", "RUST_LOG",
    ])) == 0
    error_message = "environment may not set a variable the module manages: use the module's own input for it (snowflake_*, dlq_*, kafka_*, log_level)."
  }
}

variable "log_level" {
  type        = string
  description = "`RUST_LOG` of the function: a level (`error`, `warn`, `info`, `debug`, `trace`) or a directive list such as `info,floe=debug`."
  default     = "info"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_:=,.-]+$", var.log_level))
    error_message = "log_level must be a RUST_LOG directive list, e.g. \"info\" or \"info,floe=debug\"."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Subnets of the function's network interfaces: private subnets that reach the Kafka brokers, and Snowflake and Secrets Manager (through a NAT gateway or VPC endpoints). For a self-managed cluster the event source mapping uses them too."
  nullable    = false

  validation {
    condition     = length(var.subnet_ids) > 0 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least one subnet ID (subnet-...)."
  }
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the function's network interfaces: they must allow egress to the brokers and to HTTPS (Snowflake, Secrets Manager). For a self-managed cluster the event source mapping uses them too."
  nullable    = false

  validation {
    condition     = length(var.security_group_ids) > 0 && alltrue([for s in var.security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "security_group_ids must list at least one security group ID (sg-...)."
  }
}

variable "role_permissions_boundary_arn" {
  type        = string
  description = "ARN of an IAM policy to set as the permissions boundary of the execution role, or null."
  default     = null

  validation {
    condition     = var.role_permissions_boundary_arn == null || can(regex("^arn:aws[a-z-]*:iam::([0-9]{12}|aws):policy/.+$", var.role_permissions_boundary_arn))
    error_message = "role_permissions_boundary_arn must be an IAM policy ARN."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource the module creates."
  default     = {}
  nullable    = false
}

################################################################################
# Logs
################################################################################

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch Logs keeps the function's logs: one of the values CloudWatch allows (0 keeps them forever)."
  default     = 30
  nullable    = false

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of 0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "log_kms_key_arn" {
  type        = string
  description = "ARN of a KMS key to encrypt the log group with, or null for CloudWatch Logs' default encryption. Its key policy must let the CloudWatch Logs service use it."
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}

################################################################################
# Kafka source
################################################################################

variable "kafka_kind" {
  type        = string
  description = "Where the topics live: `msk` (an Amazon MSK cluster, `msk_cluster_arn`) or `self-managed` (any Kafka reachable from `subnet_ids`, `kafka_bootstrap_servers`)."
  default     = "msk"
  nullable    = false

  validation {
    condition     = contains(["msk", "self-managed"], var.kafka_kind)
    error_message = "kafka_kind must be \"msk\" or \"self-managed\"."
  }
}

variable "msk_cluster_arn" {
  type        = string
  description = "ARN of the MSK cluster (`arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>`); required when `kafka_kind` is `msk`. The topic and consumer group ARNs of the IAM policy derive from it."
  default     = null

  validation {
    condition     = var.msk_cluster_arn == null || can(regex("^arn:aws[a-z-]*:kafka:[a-z0-9-]+:[0-9]{12}:cluster/[^/]+/[^/]+$", var.msk_cluster_arn))
    error_message = "msk_cluster_arn must be an MSK cluster ARN: arn:aws:kafka:<region>:<account>:cluster/<name>/<uuid>."
  }
}

variable "kafka_bootstrap_servers" {
  type        = list(string)
  description = "Bootstrap brokers (`host:port`) of a self-managed cluster; required when `kafka_kind` is `self-managed`."
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for b in var.kafka_bootstrap_servers : can(regex("^[A-Za-z0-9.-]+:[0-9]{1,5}$", b))])
    error_message = "kafka_bootstrap_servers must be host:port entries."
  }
}

variable "kafka_auth" {
  type        = string
  description = "How the event source mapping and floe's Kafka dead-letter producer authenticate: `msk-iam` (MSK only) or `scram-sha-512` (SASL/SCRAM over TLS, with `kafka_scram_secret_arn`). Null picks `msk-iam` for MSK and `scram-sha-512` for a self-managed cluster."
  default     = null

  validation {
    condition     = var.kafka_auth == null || contains(["msk-iam", "scram-sha-512"], coalesce(var.kafka_auth, "-"))
    error_message = "kafka_auth must be null, \"msk-iam\" or \"scram-sha-512\"."
  }
}

variable "kafka_scram_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret holding the SASL/SCRAM credentials as JSON `{\"username\",\"password\"}`; required with `scram-sha-512`. Both the event source mapping and the function read it."
  default     = null

  validation {
    condition     = var.kafka_scram_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.kafka_scram_secret_arn))
    error_message = "kafka_scram_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "topics" {
  type        = list(string)
  description = "Kafka topics to consume (Debezium's `<prefix>.<schema>.<table>`); the module creates one event source mapping per topic."
  nullable    = false

  validation {
    condition     = length(var.topics) > 0 && length(distinct(var.topics)) == length(var.topics) && alltrue([for t in var.topics : can(regex("^[A-Za-z0-9._-]{1,249}$", t))])
    error_message = "topics must list at least one topic, without repeats, each 1-249 of [A-Za-z0-9._-]."
  }
}

variable "consumer_group_id_prefix" {
  type        = string
  description = "Consumer group of each mapping is `<prefix>-<topic>` (Lambda wants one group per mapping); null uses `function_name`. A group that already has committed offsets resumes from them and ignores `starting_position`."
  default     = null

  validation {
    condition     = var.consumer_group_id_prefix == null || can(regex("^[A-Za-z0-9_.:@=+/-]{1,100}$", var.consumer_group_id_prefix))
    error_message = "consumer_group_id_prefix must be 1-100 of [A-Za-z0-9_.:@=+/-]."
  }
}

variable "event_source_mapping_enabled" {
  type        = bool
  description = "Whether the mappings poll; false pauses consumption (the consumer groups keep their offsets)."
  default     = true
  nullable    = false
}

variable "starting_position" {
  type        = string
  description = "Where a new consumer group starts: `TRIM_HORIZON` (the oldest record, so no change is missed) or `LATEST`."
  default     = "TRIM_HORIZON"
  nullable    = false

  validation {
    condition     = contains(["LATEST", "TRIM_HORIZON"], var.starting_position)
    error_message = "starting_position must be \"LATEST\" or \"TRIM_HORIZON\"."
  }
}

variable "batch_size" {
  type        = number
  description = "Most records per invocation (1-10000); Lambda also caps a batch at 6 MB."
  default     = 500
  nullable    = false

  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000 && floor(var.batch_size) == var.batch_size
    error_message = "batch_size must be a whole number between 1 and 10000."
  }
}

variable "maximum_batching_window_in_seconds" {
  type        = number
  description = "Longest wait to fill a batch, in seconds (0-300)."
  default     = 1
  nullable    = false

  validation {
    condition     = var.maximum_batching_window_in_seconds >= 0 && var.maximum_batching_window_in_seconds <= 300 && floor(var.maximum_batching_window_in_seconds) == var.maximum_batching_window_in_seconds
    error_message = "maximum_batching_window_in_seconds must be a whole number between 0 and 300."
  }
}

variable "minimum_pollers" {
  type        = number
  description = "Provisioned mode: least event pollers per mapping (1-200). Provisioned mode is what makes `ReportBatchItemFailures` and the retry settings work on Kafka."
  default     = 1
  nullable    = false

  validation {
    condition     = var.minimum_pollers >= 1 && var.minimum_pollers <= 200 && floor(var.minimum_pollers) == var.minimum_pollers
    error_message = "minimum_pollers must be a whole number between 1 and 200."
  }
}

variable "maximum_pollers" {
  type        = number
  description = "Provisioned mode: most event pollers per mapping (1-2000, at least `minimum_pollers`)."
  default     = 10
  nullable    = false

  validation {
    condition     = var.maximum_pollers >= 1 && var.maximum_pollers <= 2000 && floor(var.maximum_pollers) == var.maximum_pollers
    error_message = "maximum_pollers must be a whole number between 1 and 2000."
  }
}

variable "bisect_batch_on_function_error" {
  type        = bool
  description = "Split a batch in two and retry the halves when the function fails as a whole. floe reports single bad records through `batchItemFailures` and its own dead-letter sink, so a whole-batch failure usually means Snowflake is unreachable, where splitting does not help."
  default     = false
  nullable    = false
}

variable "maximum_retry_attempts" {
  type        = number
  description = "Retries of a failed batch before it goes to `on_failure_destination` (-1 to 10000; -1 retries until the record expires, and Lambda caps it at 10 when an on-failure destination is set)."
  default     = -1
  nullable    = false

  validation {
    condition     = var.maximum_retry_attempts >= -1 && var.maximum_retry_attempts <= 10000 && floor(var.maximum_retry_attempts) == var.maximum_retry_attempts
    error_message = "maximum_retry_attempts must be a whole number between -1 and 10000."
  }
}

variable "maximum_record_age_in_seconds" {
  type        = number
  description = "Oldest record the mapping still sends, in seconds: -1 (no limit) or 60-604800."
  default     = -1
  nullable    = false

  validation {
    condition     = var.maximum_record_age_in_seconds == -1 || (var.maximum_record_age_in_seconds >= 60 && var.maximum_record_age_in_seconds <= 604800 && floor(var.maximum_record_age_in_seconds) == var.maximum_record_age_in_seconds)
    error_message = "maximum_record_age_in_seconds must be -1 or a whole number between 60 and 604800."
  }
}

variable "on_failure_destination" {
  type        = string
  description = "Where the mapping sends a batch it gave up on: an SQS queue ARN, an S3 bucket ARN, or `kafka://<topic>` (a topic of the same cluster); null for none. The execution role gets the matching write permission."
  default     = null

  validation {
    condition = var.on_failure_destination == null || anytrue([
      can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}(\\.fifo)?$", var.on_failure_destination)),
      can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.on_failure_destination)),
      can(regex("^kafka://[A-Za-z0-9._-]{1,249}$", var.on_failure_destination)),
    ])
    error_message = "on_failure_destination must be null, an SQS queue ARN, an S3 bucket ARN (arn:aws:s3:::<bucket>) or kafka://<topic>."
  }
}

################################################################################
# floe's dead-letter sink
################################################################################

variable "dlq_kind" {
  type        = string
  description = "Where floe writes the records it cannot load (`FLOE__DLQ__KIND`): `kafka` (a topic of the source cluster), `sqs` or `s3`."
  default     = "kafka"
  nullable    = false

  validation {
    condition     = contains(["kafka", "sqs", "s3"], var.dlq_kind)
    error_message = "dlq_kind must be \"kafka\", \"sqs\" or \"s3\"."
  }
}

variable "dlq_topic" {
  type        = string
  description = "Dead-letter topic of `dlq_kind = \"kafka\"` (`FLOE__DLQ__TOPIC`); `{topic}` stands for the source topic. The IAM policy covers the topic this gives for each entry of `topics`."
  default     = "{topic}.dlq"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9._{}-]{1,249}$", var.dlq_topic))
    error_message = "dlq_topic must be 1-249 of [A-Za-z0-9._-], with {topic} for the source topic."
  }
}

variable "dlq_create_topics" {
  type        = bool
  description = "Let the function create missing dead-letter topics (grants `kafka-cluster:CreateTopic` on exactly those topics; MSK with IAM auth only)."
  default     = false
  nullable    = false
}

variable "create_dlq_queue" {
  type        = bool
  description = "Create an SQS queue for `dlq_kind = \"sqs\"` (SQS-managed encryption, 14-day retention)."
  default     = false
  nullable    = false
}

variable "dlq_queue_name" {
  type        = string
  description = "Name of the queue `create_dlq_queue` creates; null uses `<function_name>-dlq`."
  default     = null

  validation {
    condition     = var.dlq_queue_name == null || can(regex("^[A-Za-z0-9_-]{1,80}$", var.dlq_queue_name))
    error_message = "dlq_queue_name must be 1-80 of [A-Za-z0-9_-]."
  }
}

variable "dlq_sqs_queue_arn" {
  type        = string
  description = "ARN of an existing queue for `dlq_kind = \"sqs\"` when `create_dlq_queue` is false. The function gets its URL in `FLOE__DLQ__SQS_QUEUE_URL`."
  default     = null

  validation {
    condition     = var.dlq_sqs_queue_arn == null || can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,80}(\\.fifo)?$", var.dlq_sqs_queue_arn))
    error_message = "dlq_sqs_queue_arn must be an SQS queue ARN."
  }
}

variable "dlq_s3_bucket" {
  type        = string
  description = "Bucket name for `dlq_kind = \"s3\"` (`FLOE__DLQ__S3_BUCKET`)."
  default     = null

  validation {
    condition     = var.dlq_s3_bucket == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.dlq_s3_bucket))
    error_message = "dlq_s3_bucket must be an S3 bucket name."
  }
}

variable "dlq_s3_prefix" {
  type        = string
  description = "Key prefix for `dlq_kind = \"s3\"` (`FLOE__DLQ__S3_PREFIX`); the function may write only below it."
  default     = "floe-dlq/"
  nullable    = false

  validation {
    condition     = length(var.dlq_s3_prefix) <= 512 && !strcontains(var.dlq_s3_prefix, "*")
    error_message = "dlq_s3_prefix must be at most 512 characters, without '*'."
  }
}

################################################################################
# Snowflake
################################################################################

variable "snowflake_account_url" {
  type        = string
  description = "Base URL of the Snowflake account (`FLOE__SINK__SNOWFLAKE__ACCOUNT_URL`), e.g. for a private link; null lets floe derive it from the account."
  default     = null

  validation {
    condition     = var.snowflake_account_url == null || can(regex("^https://[^ ]+$", var.snowflake_account_url))
    error_message = "snowflake_account_url must be an https:// URL."
  }
}

variable "snowflake_account" {
  type        = string
  description = "Snowflake account identifier, as in the key-pair JWT issuer (`FLOE__SINK__SNOWFLAKE__ACCOUNT`)."
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.snowflake_account))
    error_message = "snowflake_account must be an account identifier such as myorg-myaccount or xy12345.eu-west-1."
  }
}

variable "snowflake_user" {
  type        = string
  description = "Snowflake login name whose public key matches the private key secret (`FLOE__SINK__SNOWFLAKE__USER`)."
  nullable    = false

  validation {
    condition     = length(trimspace(var.snowflake_user)) > 0
    error_message = "snowflake_user must not be empty."
  }
}

variable "snowflake_database" {
  type        = string
  description = "Target database (`FLOE__SINK__SNOWFLAKE__DATABASE`)."
  nullable    = false

  validation {
    condition     = length(trimspace(var.snowflake_database)) > 0
    error_message = "snowflake_database must not be empty."
  }
}

variable "snowflake_schema" {
  type        = string
  description = "Target schema (`FLOE__SINK__SNOWFLAKE__SCHEMA`)."
  nullable    = false

  validation {
    condition     = length(trimspace(var.snowflake_schema)) > 0
    error_message = "snowflake_schema must not be empty."
  }
}

variable "snowflake_warehouse" {
  type        = string
  description = "Virtual warehouse that runs the MERGEs (`FLOE__SINK__SNOWFLAKE__WAREHOUSE`); null uses the user's default."
  default     = null
}

variable "snowflake_role" {
  type        = string
  description = "Role to assume (`FLOE__SINK__SNOWFLAKE__ROLE`); null uses the user's default."
  default     = null
}

variable "create_snowflake_secret" {
  type        = bool
  description = "Create the Secrets Manager secret holding the Snowflake private key from `snowflake_private_key_pem`. When false, pass an existing secret in `snowflake_private_key_secret_arn`."
  default     = false
  nullable    = false
}

variable "snowflake_private_key_pem" {
  type        = string
  description = "PKCS#8 PEM private key of `snowflake_user`, stored as the created secret's string (with `create_snowflake_secret`). It also lands in the Terraform state: protect the state accordingly."
  default     = null
  sensitive   = true

  validation {
    condition     = var.snowflake_private_key_pem == null || can(regex("-----BEGIN (ENCRYPTED )?PRIVATE KEY-----", var.snowflake_private_key_pem))
    error_message = "snowflake_private_key_pem must be a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)."
  }
}

variable "snowflake_private_key_secret_arn" {
  type        = string
  description = "ARN of an existing secret whose string is the Snowflake PEM private key (when `create_snowflake_secret` is false)."
  default     = null

  validation {
    condition     = var.snowflake_private_key_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.snowflake_private_key_secret_arn))
    error_message = "snowflake_private_key_secret_arn must be a Secrets Manager secret ARN."
  }
}

variable "snowflake_secret_name" {
  type        = string
  description = "Name of the secret `create_snowflake_secret` creates; null uses `floe/<function_name>/snowflake-private-key`."
  default     = null

  validation {
    condition     = var.snowflake_secret_name == null || can(regex("^[A-Za-z0-9/_+=.@-]{1,512}$", var.snowflake_secret_name))
    error_message = "snowflake_secret_name must be 1-512 of [A-Za-z0-9/_+=.@-]."
  }
}

variable "snowflake_secret_recovery_window_in_days" {
  type        = number
  description = "Days a deleted created secret can still be restored: 0 (delete at once) or 7-30."
  default     = 7
  nullable    = false

  validation {
    condition     = var.snowflake_secret_recovery_window_in_days == 0 || (var.snowflake_secret_recovery_window_in_days >= 7 && var.snowflake_secret_recovery_window_in_days <= 30 && floor(var.snowflake_secret_recovery_window_in_days) == var.snowflake_secret_recovery_window_in_days)
    error_message = "snowflake_secret_recovery_window_in_days must be 0 or a whole number between 7 and 30."
  }
}

variable "secret_kms_key_arn" {
  type        = string
  description = "ARN of the customer managed KMS key that encrypts the secrets (the created Snowflake secret uses it; give it for existing secrets encrypted with it, e.g. an MSK SCRAM secret). The role gets `kms:Decrypt` on it through Secrets Manager only. Null: the AWS managed key."
  default     = null

  validation {
    condition     = var.secret_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.secret_kms_key_arn))
    error_message = "secret_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}
