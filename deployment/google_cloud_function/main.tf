# The prediction service as a 2nd-gen Cloud Function, from the bundle's function.zip.
#
#   bash executables/cloud_setup.sh google_cloud_function      # writes function.zip here
#   cd output/deployment/google_cloud_function
#   terraform init
#   terraform apply -var project=YOUR_PROJECT -var region=europe-west1
#
# No project id in this file: it comes from -var project=... (or TF_VAR_project).
# Steps from a clean project: documentation/deployment.md#google_cloud_function

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

variable "project" {
  description = "Google Cloud project id"
  type        = string
}

variable "region" {
  description = "Region of the function and its source bucket"
  type        = string
  default     = "europe-west1"
}

variable "function_name" {
  description = "Name of the function (lower case letters, digits and hyphens)"
  type        = string
  default     = "ml-project"
}

variable "bucket_name" {
  description = "Bucket for the source zip; empty: <project>-<function_name>-source"
  type        = string
  default     = ""
}

variable "memory" {
  description = "Memory of an instance (the model, pandas and scikit-learn must fit)"
  type        = string
  default     = "1Gi"
}

variable "max_instances" {
  type    = number
  default = 4
}

variable "allow_unauthenticated" {
  description = "true: anyone may call the URL (then set api_key); false: callers need roles/run.invoker"
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
  description = "ML_PROJECT_PREDICTION_LOG_URL: a database that outlives instances (empty: SQLite on the instance)"
  type        = string
  default     = ""
  sensitive   = true
}

provider "google" {
  project = var.project
  region  = var.region
}

locals {
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.project}-${var.function_name}-source"
  environment = merge(
    var.api_key != "" ? { ML_PROJECT_API_KEY = var.api_key } : {},
    var.prediction_log_url != "" ? { ML_PROJECT_PREDICTION_LOG_URL = var.prediction_log_url } : {},
  )
}

resource "google_storage_bucket" "source" {
  name                        = local.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  force_destroy               = true
}

resource "google_storage_bucket_object" "source" {
  # The content hash in the name: a new zip is a new object, so the function is rebuilt.
  name   = "function-${filemd5("${path.module}/function.zip")}.zip"
  bucket = google_storage_bucket.source.name
  source = "${path.module}/function.zip"
}

resource "google_cloudfunctions2_function" "prediction" {
  name     = var.function_name
  location = var.region

  build_config {
    runtime     = "python311" # the Python of Pipfile.lock
    entry_point = "prediction_service"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory      = var.memory
    timeout_seconds       = 60
    max_instance_count    = var.max_instances
    environment_variables = local.environment
  }
}

resource "google_cloud_run_service_iam_member" "public" {
  count    = var.allow_unauthenticated ? 1 : 0
  location = google_cloudfunctions2_function.prediction.location
  service  = google_cloudfunctions2_function.prediction.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

output "url" {
  description = "Base URL of the service: ML_PROJECT_SERVER_URL for the deployed-server use case"
  value       = google_cloudfunctions2_function.prediction.service_config[0].uri
}
