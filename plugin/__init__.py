"""Everything Label Studio facing: label config, SDK client, project bootstrap CLI."""
