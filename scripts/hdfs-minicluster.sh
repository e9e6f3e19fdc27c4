#!/usr/bin/env bash
# A real HDFS (Apache Hadoop's MiniDFSCluster: one NameNode, one DataNode, WebHDFS on) on
# 127.0.0.1 for the HDFS model-store tests. Jars come from Maven Central; needs a JDK (17) and Maven.
#
#   scripts/hdfs-minicluster.sh build    resolve the jars and compile the launcher into the cache
#                                        (reused when complete; ~15 s with a warm ~/.m2)
#   scripts/hdfs-minicluster.sh command  print the java command line that starts a cluster:
#                                        append BASE_DIR READY_FILE; it writes
#                                        "webhdfs=http://127.0.0.1:PORT" to READY_FILE when up and
#                                        exits when its standard input closes
#
# Cache: ${DEEPREC_HDFS_CACHE:-$HOME/.cache/deeprec-serving/hdfs-minicluster-3.4.1}
set -euo pipefail

HADOOP_VERSION=3.4.1
CACHE=${DEEPREC_HDFS_CACHE:-$HOME/.cache/deeprec-serving/hdfs-minicluster-$HADOOP_VERSION}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/hdfs-minicluster" && pwd)
STAMP=$CACHE/stamp

log() { printf '[hdfs-minicluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stamp_text() {
  # Changes to the pom or the launcher invalidate the cache.
  cat "$SRC/pom.xml" "$SRC/src/MiniHdfs.java" | sha256sum | cut -d' ' -f1
}

complete() {
  [[ -f $STAMP && "$(cat "$STAMP")" == "$(stamp_text)" && -f $CACHE/classes/MiniHdfs.class ]]
}

build() {
  if complete; then
    return 0
  fi
  command -v mvn >/dev/null || { log "ERROR: mvn not found (apt-get install maven)"; exit 1; }
  command -v javac >/dev/null || { log "ERROR: javac not found (apt-get install openjdk-17-jdk-headless)"; exit 1; }
  log "resolving Hadoop $HADOOP_VERSION MiniDFSCluster jars into $CACHE"
  rm -rf "$CACHE"
  mkdir -p "$CACHE/classes"
  mvn -B -q -f "$SRC/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$CACHE/lib" -DincludeScope=runtime >&2
  javac -cp "$CACHE/lib/*" -d "$CACHE/classes" "$SRC/src/MiniHdfs.java"
  cp "$SRC/log4j.properties" "$CACHE/classes/"
  stamp_text > "$STAMP"
  log "ready"
}

case "${1:-}" in
  build) build ;;
  command)
    build
    echo "java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp $CACHE/classes:$CACHE/lib/* MiniHdfs"
    ;;
  *) echo "usage: $0 build|command" >&2; exit 2 ;;
esac
