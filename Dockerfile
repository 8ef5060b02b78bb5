# The project image: Airflow 3.3 extended with the core environment and the project.
# Used for the Airflow services and, with gunicorn, for serving (see docs/deployment.md once the
# scale-out work lands). The PyFlink job has its own image (include/flink/Dockerfile, later).
FROM apache/airflow:3.3.2-python3.11

USER root
# Java 17 for Spark (spark-submit) and the Kafka tools.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1

USER airflow
WORKDIR /opt/lambdarec
# The lock first, so code changes do not reinstall dependencies.
COPY --chown=airflow:root requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root include/ include/
COPY --chown=airflow:root plugins/ plugins/
RUN pip install --no-cache-dir --no-deps -e .

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root feature_repo/ feature_repo/
COPY --chown=airflow:root great_expectations/ great_expectations/
COPY --chown=airflow:root serving/ serving/
