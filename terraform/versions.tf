terraform {
  # Validation blocks that refer only to their own variable, optional() object attributes
  # and lifecycle preconditions: all there since 1.5.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.28.0 is the first release whose aws_lambda_event_source_mapping accepts a
      # `kafka://<topic>` on-failure destination (earlier ones reject it as "not a valid
      # ARN"); provisioned_poller_config, and bisect/retry/record-age settings on Kafka
      # mappings, are older than that.
      version = ">= 6.28.0"
    }
  }
}
