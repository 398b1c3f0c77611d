"""Cost and usage accounting: what each flow run used (wall, CPU, memory, GPU) and requested on Kubernetes,
recorded once (`accounting.account_usage`) and read back by `aicml usage`."""
