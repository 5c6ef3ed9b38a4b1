# The prediction service as a Lambda function from a container image, behind a Function URL
# (and, with -var http_api=true, an API Gateway HTTP API too).
#
# The image must be in the repository before the function can use it, so apply in two steps:
#   terraform init
#   terraform apply -target=aws_ecr_repository.serving -var region=eu-west-1
#   (docker build, tag and push: the commands `cloud_setup.sh aws_lambda` prints)
#   terraform apply -var region=eu-west-1
#
# No account id in this file: the provider takes it from your credentials.
# Steps from a clean account: documentation/deployment.md#aws_lambda

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.18"
    }
  }
}

variable "region" {
  description = "AWS region of the repository and the function"
  type        = string
}

variable "function_name" {
  description = "Name of the function, and of its ECR repository"
  type        = string
  default     = "ml-project"
}

variable "image_tag" {
  description = "Tag of the pushed image to run"
  type        = string
  default     = "latest"
}

variable "memory_mb" {
  description = "Memory (and so CPU) of the function; the model, pandas and scikit-learn must fit"
  type        = number
  default     = 2048
}

variable "timeout_seconds" {
  type    = number
  default = 30
}

variable "function_url_auth_type" {
  description = "AWS_IAM: callers sign requests (SigV4); NONE: a public URL (then set api_key)"
  type        = string
  default     = "AWS_IAM"
}

variable "http_api" {
  description = "Also create an API Gateway HTTP API in front of the function"
  type        = bool
  default     = false
}

variable "api_key" {
  description = "ML_PROJECT_API_KEY: clients must send it as X-API-Key (empty: no key)"
  type        = string
  default     = ""
  sensitive   = true
}

variable "prediction_log_url" {
  description = "ML_PROJECT_PREDICTION_LOG_URL: a database that outlives the function's instances (empty: SQLite in /tmp)"
  type        = string
  default     = ""
  sensitive   = true
}

provider "aws" {
  region = var.region
}

locals {
  environment = merge(
    var.api_key != "" ? { ML_PROJECT_API_KEY = var.api_key } : {},
    var.prediction_log_url != "" ? { ML_PROJECT_PREDICTION_LOG_URL = var.prediction_log_url } : {},
  )
}

resource "aws_ecr_repository" "serving" {
  name                 = var.function_name
  image_tag_mutability = "MUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
}

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "serving" {
  name               = "${var.function_name}-role"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
}

resource "aws_iam_role_policy_attachment" "logs" {
  role       = aws_iam_role.serving.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}

resource "aws_lambda_function" "serving" {
  function_name = var.function_name
  role          = aws_iam_role.serving.arn
  package_type  = "Image"
  image_uri     = "${aws_ecr_repository.serving.repository_url}:${var.image_tag}"
  architectures = ["x86_64"]
  memory_size   = var.memory_mb
  timeout       = var.timeout_seconds

  environment {
    variables = local.environment
  }

  depends_on = [aws_iam_role_policy_attachment.logs]
}

resource "aws_lambda_function_url" "serving" {
  function_name      = aws_lambda_function.serving.function_name
  authorization_type = var.function_url_auth_type
}

# A public URL needs both permissions: to invoke the URL, and the function through it.
resource "aws_lambda_permission" "public_url" {
  count                  = var.function_url_auth_type == "NONE" ? 1 : 0
  statement_id           = "FunctionURLAllowPublicAccess"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.serving.function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "public_url_invoke" {
  count                    = var.function_url_auth_type == "NONE" ? 1 : 0
  statement_id             = "FunctionURLAllowInvokeAction"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.serving.function_name
  principal                = "*"
  invoked_via_function_url = true
}

resource "aws_apigatewayv2_api" "serving" {
  count         = var.http_api ? 1 : 0
  name          = var.function_name
  protocol_type = "HTTP"
  target        = aws_lambda_function.serving.arn # quick create: $default route and stage
}

resource "aws_lambda_permission" "http_api" {
  count         = var.http_api ? 1 : 0
  statement_id  = "AllowHttpApiInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.serving.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.serving[0].execution_arn}/*/*"
}

output "repository_url" {
  description = "Where to push the image"
  value       = aws_ecr_repository.serving.repository_url
}

output "function_url" {
  description = "Base URL of the service: ML_PROJECT_SERVER_URL for the deployed-server use case"
  value       = aws_lambda_function_url.serving.function_url
}

output "http_api_url" {
  value = var.http_api ? aws_apigatewayv2_api.serving[0].api_endpoint : null
}
