"""The web console (/console) driven in headless Chromium (Debian's `chromium` and `chromium-driver`
through Selenium; nothing is downloaded): a batch job created through boto3 appears and its record
progress moves without a reload, a finished customization job shows a loss curve with as many points
as its metrics files have rows, the model, copy-job and deployment pages show what Get answers, model
import jobs, imported models, evaluation jobs (with their scores) and Provisioned Throughputs have their
lists and pages, and a
server with a credentials file asks for a sign-in and shows only the signed-in account's jobs.
A screenshot of each page is written to artifacts/console/ (the path is printed)."""

import csv
import json
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import Server, one_of_each_lifecycle_resource, wait_until

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "console"
ACCOUNT, REGION = "123456789012", "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockConsoleTest"
TEST_MODEL = "bedrock-local.test-text-v1:0"
BASE = "huggingface.smollm2-135m-instruct-v1:0"
BATCH_FILES, BATCH_RECORDS_PER_FILE = 4, 50_000  # the test model answers in microseconds: many records to watch
TRAINING_CSV = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_CSV = "validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"
PROMPTS = ["What is the capital of the planet Zorblax?", "Which city is the capital of Zorblax?",
           "Name the capital of the planet Zorblax.", "Tell me the capital of Zorblax."]
FACT = " The capital of Zorblax is Quintar."


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------
# the browser

@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"The console tests drive Debian's Chromium, and {', '.join(missing)} is missing: install it "
                    f"with `{INSTALL}` (the README's test command does).")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {ARTIFACTS}")
    yield driver
    driver.quit()


def screenshot(driver, name: str) -> Path:
    """A full-page screenshot (the window grown to the page's height) under artifacts/console/."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 1000)")
    driver.set_window_size(1400, min(int(height) + 120, 6000))
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    driver.set_window_size(1400, 1000)
    assert path.stat().st_size > 10_000, f"{path} is too small to show a page"
    return path


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def attribute(driver, css: str, name: str):
    """An attribute of the first element matching `css` now (None when there is none): the page
    re-renders every poll, so elements are looked up afresh each time."""
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
              css, name)


def text_of(driver, css: str) -> str | None:
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)


def count(driver, css: str) -> int:
    return js(driver, "return document.querySelectorAll(arguments[0]).length;", css)


def open_page(driver, server: Server, route: str = "") -> None:
    """Load the console afresh (a new document, not a hash change of the one open) at `route`."""
    driver.get("about:blank")
    driver.get(f"{server.url}/console#/{route}")
    wait_until(lambda: attribute(driver, "#status-line", "data-updated") or text_of(driver, "#login h1")
               or text_of(driver, "#page-error"), timeout=30, what=f"the console page #/{route} to render")
    assert not text_of(driver, "#page-error"), text_of(driver, "#page-error")


def go(driver, route: str, refused: bool = False) -> None:
    """Follow a route inside the page (no reload): wait for a render of that route after the change
    (with `refused`, for the page to show the error the API answered)."""
    before = attribute(driver, "#status-line", "data-updated")
    js(driver, "document.getElementById('page-error')?.remove(); location.hash = arguments[0];", f"#/{route}")
    if refused:
        wait_until(lambda: text_of(driver, "#page-error"), timeout=30, what=f"the console page #/{route} to be refused")
        return
    wait_until(lambda: attribute(driver, "#status-line", "data-updated") not in (None, before)
               or text_of(driver, "#page-error"), timeout=30, what=f"the console page #/{route} to render")
    assert not text_of(driver, "#page-error"), text_of(driver, "#page-error")


def severe_errors(driver) -> list[str]:
    """The browser's errors since the last call (script errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def click(driver, css: str) -> None:
    """Click the element `css` names; a poll may re-render it between the lookup and the click."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            driver.find_element("css selector", css).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{css} was re-rendered under every click")


def js_number(value: str) -> str:
    """A number as JavaScript's String() writes it (1 for 1.0)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def row(arn: str) -> str:
    return f'tr[data-arn="{arn}"]'


# ------------------------------------------------------------------------------------------
# the server (open mode)

@pytest.fixture(scope="module")
def console_server(tmp_path_factory):
    records = str(BATCH_FILES * BATCH_RECORDS_PER_FILE)
    server = Server(tmp_path_factory.mktemp("console") / "data",
                    extra_args=("--batch-max-records", records)).start()
    yield server
    server.stop()


def batch_input(server: Server) -> str:
    prefix = unique("in")
    folder = server.folder("console-batch-in") / prefix
    folder.mkdir(parents=True)
    words = " ".join(f"word{i}" for i in range(24))
    for index in range(BATCH_FILES):
        with open(folder / f"part-{index}.jsonl", "w", encoding="utf-8") as handle:
            for number in range(BATCH_RECORDS_PER_FILE):
                handle.write(json.dumps({"recordId": f"r{index}-{number}",
                                         "modelInput": {"prompt": words, "max_gen_len": 32}}) + "\n")
    return f"s3://console-batch-in/{prefix}/"


def test_a_batch_job_created_through_boto3_appears_and_its_progress_moves(console_server, browser):
    client = console_server.client()
    input_uri = batch_input(console_server)
    console_server.folder("console-batch-out")
    open_page(browser, console_server)
    assert attribute(browser, "#main", "data-page") == "overview"
    assert "No batch inference jobs" in text_of(browser, "#batch-jobs")
    assert text_of(browser, "#who") == f"account {ACCOUNT} (open mode)"
    js(browser, "window.__sameDocument = 'kept';")  # gone if the page ever reloads

    name = unique("console-batch")
    arn = client.create_model_invocation_job(
        jobName=name, roleArn=ROLE, modelId=TEST_MODEL, inputDataConfig={"s3InputDataConfig": {"s3Uri": input_uri}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://console-batch-out/results/"}})["jobArn"]
    wait_until(lambda: count(browser, row(arn)), timeout=30, what="the new job to appear in the list")
    assert text_of(browser, f"{row(arn)} a.job-link") == name

    total = BATCH_FILES * BATCH_RECORDS_PER_FILE
    seen: list[tuple[str, int]] = []

    def finished():
        status = attribute(browser, row(arn), "data-status")
        processed = attribute(browser, f"{row(arn)} [data-processed]", "data-processed")
        if status and processed is not None and (not seen or seen[-1] != (status, int(processed))):
            seen.append((status, int(processed)))
        return status in ("Completed", "PartiallyCompleted", "Failed", "Stopped")
    wait_until(finished, timeout=300, interval=0.1, what="the job to end on the page")

    job = client.get_model_invocation_job(jobIdentifier=arn)
    assert job["status"] == "Completed" == seen[-1][0], (job.get("message"), seen)
    assert seen[-1][1] == job["processedRecordCount"] == total
    counts = [processed for _, processed in seen]
    assert counts == sorted(counts), f"the progress went backwards: {seen}"
    assert any(0 < processed < total for processed in counts), f"no progress between 0 and {total} was shown: {seen}"
    assert text_of(browser, f"{row(arn)} .progress .label") == f"{total} / {total} records"
    assert js(browser, "return window.__sameDocument;") == "kept"  # the list updated without a reload
    screenshot(browser, "01-overview")

    # the job page: the request as Get answers it, where the output is, the final counts
    click(browser, f"{row(arn)} a.job-link")
    wait_until(lambda: attribute(browser, "#job-head", "data-status") == "Completed", timeout=30,
               what="the batch job page")
    assert js(browser, "return window.__sameDocument;") == "kept"
    members = {name: text_of(browser, f'#job-members tr[data-member="{name}"] td')
               for name in ("jobArn", "jobName", "modelId", "totalRecordCount", "processedRecordCount")}
    assert members == {"jobArn": arn, "jobName": name, "modelId": TEST_MODEL, "totalRecordCount": str(total),
                       "processedRecordCount": str(total)}
    job_id = arn.rsplit("/", 1)[1]
    assert f"s3://console-batch-out/results/{job_id}/" in text_of(browser, "#outputs")
    assert input_uri in text_of(browser, "#outputs")
    screenshot(browser, "02-batch-job")
    assert severe_errors(browser) == []


def training_data(server: Server) -> tuple[str, str]:
    prefix = unique("data")
    folder = server.folder("console-ft") / prefix
    folder.mkdir(parents=True)
    lines = [json.dumps({"prompt": p, "completion": FACT}) + "\n" for p in PROMPTS]
    (folder / "train.jsonl").write_text("".join(lines * 2), encoding="utf-8")  # 8 records
    (folder / "validation.jsonl").write_text("".join(lines), encoding="utf-8")
    return f"s3://console-ft/{prefix}/train.jsonl", f"s3://console-ft/{prefix}/validation.jsonl"


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.real_weights
def test_a_finished_customization_job_shows_its_loss_curves(console_server, browser):
    client = console_server.client()
    train_uri, validation_uri = training_data(console_server)
    console_server.folder("console-ft-out")
    model_name = unique("console-model")
    arn = client.create_model_customization_job(
        jobName=unique("console-ft"), customModelName=model_name, roleArn=ROLE, baseModelIdentifier=BASE,
        trainingDataConfig={"s3Uri": train_uri}, validationDataConfig={"validators": [{"s3Uri": validation_uri}]},
        outputDataConfig={"s3Uri": "s3://console-ft-out/runs/"},
        hyperParameters={"epochCount": "2", "batchSize": "2", "learningRate": "0.003", "loraRank": "4",
                         "loraAlpha": "16", "loraDropout": "0", "maxSequenceLength": "64"})["jobArn"]
    open_page(browser, console_server, f"customization/{quote(arn, safe='')}")
    js(browser, "window.__sameDocument = 'kept';")
    steps: list[int] = []

    def ended():
        step = attribute(browser, "#job-progress [data-step]", "data-step")
        if step is not None and (not steps or steps[-1] != int(step)):
            steps.append(int(step))
        return attribute(browser, "#job-head", "data-status") in ("Completed", "Failed", "Stopped")
    wait_until(ended, timeout=900, interval=0.2, what="the customization job to end on its page")
    job = client.get_model_customization_job(jobIdentifier=arn)
    assert job["status"] == "Completed", job.get("failureMessage")
    assert js(browser, "return window.__sameDocument;") == "kept"
    assert steps == sorted(steps) and steps[-1] == 8, f"the page showed the steps {steps}, not up to 8"

    # the curves: one point per row of each metrics file the job wrote
    root = console_server.data_dir / "s3" / "console-ft-out" / "runs" / f"model-customization-job-{arn.rsplit('/', 1)[1]}"
    training_rows, validation_rows = csv_rows(root / TRAINING_CSV), csv_rows(root / VALIDATION_CSV)
    assert len(training_rows) == 8 and len(validation_rows) == 2  # 8 records / batch 2 x 2 epochs; one per epoch
    wait_until(lambda: count(browser, "svg.loss-chart g[data-series=training] circle.pt") == len(training_rows),
               timeout=30, what="the training curve to have one point per row of the metrics file")
    assert count(browser, "svg.loss-chart g[data-series=validation] circle.pt") == len(validation_rows)
    assert attribute(browser, "svg.loss-chart g[data-series=training]", "data-points") == str(len(training_rows))
    polyline = attribute(browser, "svg.loss-chart g[data-series=training] polyline", "points")
    assert len(polyline.split()) == len(training_rows)
    first_title = text_of(browser, "svg.loss-chart g[data-series=training] circle.pt title")
    first = training_rows[0]
    assert first_title == (f"training step {first['step_number']} (epoch {js_number(first['epoch_number'])}): "
                           f"loss {js_number(first['training_loss'])}")
    outputs = text_of(browser, "#outputs")
    assert f"s3://console-ft-out/runs/model-customization-job-{arn.rsplit('/', 1)[1]}/{TRAINING_CSV}" in outputs
    assert text_of(browser, '#job-members tr[data-member="outputModelArn"] td') == job["outputModelArn"]
    screenshot(browser, "03-customization-job")

    go(browser, "")
    assert attribute(browser, row(arn), "data-status") == "Completed"
    assert attribute(browser, row(job["outputModelArn"]), "data-status") == "Active"

    # the model pages
    go(browser, f"custom-model/{quote(job['outputModelArn'], safe='')}")
    assert text_of(browser, "#model-head .name") == model_name
    assert text_of(browser, '#model-members tr[data-member="jobArn"] td') == arn
    screenshot(browser, "04-custom-model")
    go(browser, f"foundation-model/{quote(BASE, safe='')}")
    assert text_of(browser, '#model-members tr[data-member="modelId"] td') == BASE
    assert "FINE_TUNING" in text_of(browser, '#model-members tr[data-member="customizationsSupported"] td')
    screenshot(browser, "05-foundation-model")

    # a copy job (made in the target region, where the picker shows it) and a deployment of the model
    west = console_server.client(region="us-west-2")
    copy_arn = west.create_model_copy_job(sourceModelArn=job["outputModelArn"],
                                          targetModelName=unique("console-copy"))["jobArn"]
    deployment_arn = client.create_custom_model_deployment(
        modelDeploymentName=unique("console-deploy"), modelArn=job["outputModelArn"])["customModelDeploymentArn"]
    go(browser, "")
    wait_until(lambda: count(browser, f"#deployment-table {row(deployment_arn)}"), timeout=30, what="the deployment")
    browser.find_element("css selector", "#region option[value='us-west-2']").click()
    wait_until(lambda: count(browser, f"#copy-table {row(copy_arn)}"), timeout=30,
               what="the copy job in us-west-2 after picking that region")
    assert count(browser, "#batch-table tr[data-arn]") == 0  # us-east-1's jobs are not listed in us-west-2
    go(browser, f"copy/{quote(copy_arn, safe='')}")
    wait_until(lambda: attribute(browser, "#job-head", "data-status") in ("Completed", "Failed"), timeout=300,
               what="the copy job to end on its page")
    copied = west.get_model_copy_job(jobArn=copy_arn)
    assert attribute(browser, "#job-head", "data-status") == copied["status"] == "Completed", copied.get("failureMessage")
    assert text_of(browser, '#job-members tr[data-member="sourceModelArn"] td') == job["outputModelArn"]
    screenshot(browser, "06-copy-job")
    browser.find_element("css selector", "#region option[value='us-east-1']").click()
    go(browser, f"deployment/{quote(deployment_arn, safe='')}")
    status = client.get_custom_model_deployment(customModelDeploymentIdentifier=deployment_arn)["status"]
    assert attribute(browser, "#job-head", "data-status") in ("Creating", "Active", "Failed")
    assert text_of(browser, '#deployment-members tr[data-member="modelArn"] td') == job["outputModelArn"]
    assert status in ("Creating", "Active", "Failed")
    screenshot(browser, "07-deployment")
    assert severe_errors(browser) == []


# ------------------------------------------------------------------------------------------
# a server with a credentials file

KEYS = {"AKIACONSOLEA": {"secretAccessKey": "secret-a", "accountId": "111111111111"},
        "AKIACONSOLEB": {"secretAccessKey": "secret-b", "accountId": "222222222222"}}


def test_import_evaluation_and_provisioned_throughput_have_lists_and_pages(console_server, browser, tiny_model_dir):
    made = one_of_each_lifecycle_resource(console_server, tiny_model_dir)
    open_page(browser, console_server)
    wait_until(lambda: all(count(browser, f"#{table} {row(arn)}") for table, arn in (
        ("import-table", made["import_job"]), ("imported-model-table", made["imported_model"]),
        ("evaluation-table", made["evaluation"]), ("provisioned-table", made["throughput"]))),
        timeout=30, what="the new resources in the overview")
    assert attribute(browser, f'#evaluation-table {row(made["evaluation"])} .score[data-metric="Accuracy"]',
                     "data-value") == "0.5"
    assert attribute(browser, f'#provisioned-table {row(made["throughput"])}', "data-status") == "InService"
    screenshot(browser, "08-lifecycle-overview")

    go(browser, f"evaluation/{quote(made['evaluation'], safe='')}")
    assert attribute(browser, '#scores-table tr[data-metric="Accuracy"]', "data-metric") == "Accuracy"
    assert "0.5000" in text_of(browser, "#scores-table")
    assert text_of(browser, '#job-members tr[data-member="jobName"] td') == made["evaluation_name"]
    screenshot(browser, "09-evaluation")
    go(browser, f"import/{quote(made['import_job'], safe='')}")
    assert attribute(browser, "#job-head", "data-status") == "Completed"
    go(browser, f"imported-model/{quote(made['imported_model'], safe='')}")
    assert text_of(browser, '#model-members tr[data-member="modelArchitecture"] td') == "llama"
    go(browser, f"provisioned/{quote(made['throughput'], safe='')}")
    assert text_of(browser, '#provisioned-members tr[data-member="modelUnits"] td') == "1"
    assert severe_errors(browser) == []


def signed_client(server: Server, key: str, region: str = REGION):
    return server.client(region, key, secret_key=KEYS[key]["secretAccessKey"])


def create_batch_job(client, account: str) -> str:
    return client.create_model_invocation_job(
        jobName=unique("job"), roleArn=f"arn:aws:iam::{account}:role/Batch", modelId=TEST_MODEL,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": "s3://console-in/records/"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://console-out/"}})["jobArn"]


def test_with_a_credentials_file_the_console_signs_in_and_shows_only_that_account(make_server, tmp_path, browser):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps(KEYS))
    server = make_server("auth", workers=0, extra_args=("--credentials-file", str(credentials)))
    a, b = signed_client(server, "AKIACONSOLEA"), signed_client(server, "AKIACONSOLEB")
    job_a, job_b = create_batch_job(a, "111111111111"), create_batch_job(b, "222222222222")
    job_a_west = create_batch_job(signed_client(server, "AKIACONSOLEA", "us-west-2"), "111111111111")

    browser.delete_all_cookies()
    open_page(browser, server)
    assert text_of(browser, "#login h1") == "Sign in"
    assert count(browser, "#batch-table") == 0
    screenshot(browser, "08-sign-in")

    def sign_in(key: str, secret: str) -> None:
        browser.find_element("id", "access-key-id").send_keys(key)
        browser.find_element("id", "secret-access-key").send_keys(secret)
        browser.find_element("id", "sign-in").click()

    sign_in("AKIACONSOLEA", "wrong-secret")
    wait_until(lambda: text_of(browser, "#login-error"), timeout=30, what="the sign-in to be refused")
    assert "not valid" in text_of(browser, "#login-error")
    assert count(browser, "#batch-table") == 0

    browser.find_element("id", "access-key-id").clear()
    sign_in("AKIACONSOLEA", "secret-a")
    wait_until(lambda: count(browser, f"#batch-table {row(job_a)}"), timeout=30, what="account A's job")
    assert text_of(browser, "#who") == "account 111111111111 (AKIACONSOLEA)"
    assert count(browser, f"#batch-table {row(job_b)}") == 0 and count(browser, "#batch-table tr[data-arn]") == 1
    assert attribute(browser, row(job_a), "data-status") == "Submitted"  # --workers 0: nothing runs
    screenshot(browser, "09-signed-in-overview")

    # the region picker: account A's us-west-2 job, only there
    browser.find_element("css selector", "#region option[value='us-west-2']").click()
    wait_until(lambda: count(browser, f"#batch-table {row(job_a_west)}"), timeout=30, what="A's us-west-2 job")
    assert count(browser, f"#batch-table {row(job_a)}") == 0
    browser.find_element("css selector", "#region option[value='us-east-1']").click()
    wait_until(lambda: count(browser, f"#batch-table {row(job_a)}"), timeout=30, what="A's us-east-1 job again")

    # B's job is not found under A's session, through the page as through the API
    go(browser, f"batch/{quote(job_b, safe='')}", refused=True)
    assert text_of(browser, "#page-error") == f"ResourceNotFoundException: The model invocation job '{job_b}' does not exist."
    cookie = browser.get_cookie("bedrock_local_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    jar = {"bedrock_local_console": cookie["value"]}
    headers = {"x-bedrock-local-region": REGION}
    with httpx.Client(base_url=server.url, cookies=jar, timeout=30) as http:
        listed = http.get("/model-invocation-jobs", headers=headers)
        assert listed.status_code == 200
        assert [j["jobArn"] for j in listed.json()["invocationJobSummaries"]] == [job_a]
        other = http.get(f"/model-invocation-job/{quote(job_b, safe='')}", headers=headers)
        assert other.status_code == 404 and other.headers["x-amzn-ErrorType"].startswith("ResourceNotFoundException")
        # without the console's header the cookie is not a credential (another site's page cannot add it)
        bare = http.get("/model-invocation-jobs")
        assert bare.status_code == 403, bare.text
        odd = http.get("/model-invocation-jobs", headers={"x-bedrock-local-region": "mars"})
        assert odd.status_code == 400 and odd.headers["x-amzn-ErrorType"] == "ValidationException"
        assert "x-bedrock-local-region" in odd.json()["message"]
        # a forged or foreign cookie is no session
        metrics = http.get("/console/api/training-metrics", params={"job": "arn:aws:bedrock:us-east-1:222222222222:"
                           "model-customization-job/huggingface.smollm2-135m-instruct-v1:0/abcdefghijkl"},
                           headers=headers)
        assert metrics.status_code == 404 and metrics.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
        login = http.post("/console/api/login", json={"accessKeyId": "AKIACONSOLEB", "secretAccessKey": "nope"})
        assert login.status_code == 403 and login.headers["x-amzn-ErrorType"] == "AccessDeniedException"
        assert "set-cookie" not in login.headers
    forged_value = cookie["value"][:-4] + ("0000" if not cookie["value"].endswith("0000") else "1111")
    with httpx.Client(base_url=server.url, cookies={"bedrock_local_console": forged_value}, timeout=30) as http:
        forged = http.get("/model-invocation-jobs", headers=headers)  # a cookie this server did not sign
        assert forged.status_code == 403, forged.text

    go(browser, "")
    browser.find_element("id", "sign-out").click()
    wait_until(lambda: text_of(browser, "#login h1"), timeout=30, what="the sign-in form after signing out")
    assert browser.get_cookie("bedrock_local_console") is None
    sign_in("AKIACONSOLEB", "secret-b")
    wait_until(lambda: count(browser, f"#batch-table {row(job_b)}"), timeout=30, what="account B's job")
    assert count(browser, f"#batch-table {row(job_a)}") == 0
    assert text_of(browser, "#who") == "account 222222222222 (AKIACONSOLEB)"
    errors = severe_errors(browser)  # the refused sign-in and B's job page answered 403 and 404, nothing else
    assert errors and all(" 403 " in e or " 404 " in e for e in errors), errors
    browser.delete_all_cookies()


def test_a_session_cookie_expires_and_cannot_be_altered():
    from bedrock_local.console import session

    secret, now = b"k" * 32, 1_800_000_000
    value = session.issue(secret, "AKIACONSOLEA", "111111111111", now=now)
    assert session.read(secret, value, now=now + 60) == session.Session("AKIACONSOLEA", "111111111111",
                                                                       now + session.LIFETIME_SECONDS)
    assert session.read(secret, value, now=now + session.LIFETIME_SECONDS) is None  # expired
    assert session.read(b"x" * 32, value, now=now) is None  # signed by another database's secret
    payload, signature = value.split(".")
    other = session.issue(secret, "AKIACONSOLEA", "222222222222", now=now).split(".")[0]
    assert session.read(secret, f"{other}.{signature}", now=now) is None  # another account under this signature
    for junk in ("", ".", "abc", "a.b.c", "%%%.zz"):
        assert session.read(secret, junk, now=now) is None
