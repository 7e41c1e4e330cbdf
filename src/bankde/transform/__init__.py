"""dbt on the warehouse: the in-process runner, the `bankde dbt` commands and the fraud evaluation."""
