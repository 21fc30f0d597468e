"""`bedrock-local models`: foundation models, custom models and custom model deployments of a
running server in tables (ListFoundationModels, ListCustomModels, ListCustomModelDeployments)."""

from rich.table import Table

from bedrock_local.console_cli.common import Clients, call, console, paged, print_json, when

SECTIONS = ("foundation", "custom", "deployments")


def register(commands, add_client_flags) -> None:
    parser = commands.add_parser("models", help="list foundation models, custom models and deployments",
                                 description="List the foundation models, custom models and custom model "
                                             "deployments of a running bedrock-local server.")
    add_client_flags(parser)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="only this table (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON instead of tables")
    parser.set_defaults(run=run)


def run(args) -> int:
    clients = Clients(args)
    client = clients.bedrock
    sections = args.only or list(SECTIONS)
    found = {}
    if "foundation" in sections:
        found["foundation"] = call("ListFoundationModels", client.list_foundation_models)["modelSummaries"]
    if "custom" in sections:
        found["custom"] = paged(client, "list_custom_models", "modelSummaries")
    if "deployments" in sections:
        found["deployments"] = paged(client, "list_custom_model_deployments", "modelDeploymentSummaries")
    if args.json:
        print_json(found)
        return 0
    out = console()
    if "foundation" in found:
        table = Table(title=f"Foundation models ({clients.region})")
        for column in ("model id", "provider", "name", "input → output", "streaming", "customizations",
                       "inference", "lifecycle"):
            table.add_column(column)
        for model in found["foundation"]:
            table.add_row(model["modelId"], model.get("providerName", ""), model.get("modelName", ""),
                          f"{', '.join(model.get('inputModalities', []))} → {', '.join(model.get('outputModalities', []))}",
                          "yes" if model.get("responseStreamingSupported") else "no",
                          ", ".join(model.get("customizationsSupported", [])),
                          ", ".join(model.get("inferenceTypesSupported", [])),
                          (model.get("modelLifecycle") or {}).get("status", ""))
        out.print(table)
    if "custom" in found:
        table = Table(title=f"Custom models ({clients.region})")
        for column in ("name", "status", "base model", "customization", "created (UTC)"):
            table.add_column(column, no_wrap=True)
        table.add_column("ARN", overflow="fold")
        for model in found["custom"]:
            table.add_row(model["modelName"], model.get("modelStatus", ""), model.get("baseModelName", ""),
                          model.get("customizationType", ""), when(model.get("creationTime")), model["modelArn"])
        out.print(table if found["custom"] else "No custom models.")
    if "deployments" in found:
        table = Table(title=f"Custom model deployments ({clients.region})")
        for column in ("name", "status", "created (UTC)"):
            table.add_column(column, no_wrap=True)
        table.add_column("model ARN", overflow="fold")
        table.add_column("ARN", overflow="fold")
        for deployment in found["deployments"]:
            table.add_row(deployment["customModelDeploymentName"], deployment.get("status", ""),
                          when(deployment.get("createdAt")), deployment.get("modelArn", ""),
                          deployment["customModelDeploymentArn"])
        out.print(table if found["deployments"] else "No deployments.")
    return 0
