# The project image: Airflow 3.3 extended with the core environment (requirements.txt) and the
# project. Runs the Airflow components, MLflow, the Spark master and workers (pyspark's own Spark,
# so the driver in Airflow and the executors share one Spark and one Python), the feature pusher
# and, with gunicorn, the Flask app. The PyFlink job has its own image: include/flink/Dockerfile.
# See docs/deployment.md.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

USER root
# Java 17 for Spark (spark-submit, master, workers) and the Kafka tools; JAVA_HOME is a stable
# link so the image builds on amd64 and arm64 alike.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/usr/lib/jvm/java-17 \
    LAMBDAREC_JAVA_HOME=/usr/lib/jvm/java-17 \
    TF_USE_LEGACY_KERAS=1 \
    GRPC_ENABLE_FORK_SUPPORT=false \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER airflow
WORKDIR /opt/lambdarec
# The lock first, so code changes do not reinstall dependencies. Naming apache-airflow beside the
# lock keeps pip from moving the base image's Airflow (the lock pins the same version).
COPY --chown=airflow:root requirements.txt ./
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r requirements.txt

COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root include/ include/
COPY --chown=airflow:root plugins/ plugins/
RUN pip install --no-cache-dir --no-deps -e .

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root feature_repo/ feature_repo/
COPY --chown=airflow:root great_expectations/ great_expectations/
COPY --chown=airflow:root serving/ serving/
