"""`bedrock-local models`: foundation models, custom models, imported models, custom model
deployments and provisioned throughputs of a running server in tables (ListFoundationModels,
ListCustomModels, ListImportedModels, ListCustomModelDeployments, ListProvisionedModelThroughputs)."""

from rich.table import Table

from bedrock_local.console_cli.common import Clients, call, console, paged, print_json, when

SECTIONS = ("foundation", "custom", "imported", "deployments", "provisioned")


def register(commands, add_client_flags) -> None:
    parser = commands.add_parser("models", help="list foundation, custom and imported models, deployments and "
                                                "provisioned throughputs",
                                 description="List the foundation models, custom models, imported models, custom "
                                             "model deployments and provisioned throughputs of a running "
                                             "bedrock-local server.")
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
    if "imported" in sections:
        found["imported"] = paged(client, "list_imported_models", "modelSummaries")
    if "deployments" in sections:
        found["deployments"] = paged(client, "list_custom_model_deployments", "modelDeploymentSummaries")
    if "provisioned" in sections:
        found["provisioned"] = paged(client, "list_provisioned_model_throughputs", "provisionedModelSummaries")
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
    if "imported" in found:
        table = Table(title=f"Imported models ({clients.region})")
        for column in ("name", "architecture", "instruct", "created (UTC)"):
            table.add_column(column, no_wrap=True)
        table.add_column("ARN", overflow="fold")
        for model in found["imported"]:
            table.add_row(model["modelName"], model.get("modelArchitecture", ""),
                          "yes" if model.get("instructSupported") else "no", when(model.get("creationTime")),
                          model["modelArn"])
        out.print(table if found["imported"] else "No imported models.")
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
    if "provisioned" in found:
        table = Table(title=f"Provisioned throughputs ({clients.region})")
        for column in ("name", "status", "model units", "commitment", "created (UTC)"):
            table.add_column(column, no_wrap=True)
        table.add_column("model ARN", overflow="fold")
        table.add_column("ARN", overflow="fold")
        for throughput in found["provisioned"]:
            units = str(throughput.get("modelUnits", ""))
            if throughput.get("desiredModelUnits") not in (None, throughput.get("modelUnits")):
                units += f" → {throughput['desiredModelUnits']}"
            model = throughput.get("modelArn", "")
            if throughput.get("desiredModelArn") not in (None, model):
                model += f" → {throughput['desiredModelArn']}"
            table.add_row(throughput["provisionedModelName"], throughput.get("status", ""), units,
                          throughput.get("commitmentDuration", "none"), when(throughput.get("creationTime")), model,
                          throughput["provisionedModelArn"])
        out.print(table if found["provisioned"] else "No provisioned throughputs.")
    return 0
