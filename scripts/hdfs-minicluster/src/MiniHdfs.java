import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A one-NameNode, one-DataNode HDFS on 127.0.0.1 for tests, WebHDFS enabled.
 *
 * Usage: MiniHdfs BASE_DIR READY_FILE. Writes "webhdfs=http://127.0.0.1:PORT\nrpc=hdfs://127.0.0.1:PORT\n"
 * to READY_FILE once the cluster is up (so a test never guesses ports), then runs until standard
 * input closes or the process is terminated, so it never outlives the test that started it.
 */
public final class MiniHdfs {
  public static void main(String[] args) throws Exception {
    File base = new File(args[0]);
    File ready = new File(args[1]);
    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
    conf.setBoolean("dfs.webhdfs.enabled", true);
    // Tests connect as an arbitrary user.name; permissions are not what they check.
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.set("dfs.namenode.http-address", "127.0.0.1:0");
    conf.set("dfs.datanode.http.address", "127.0.0.1:0");
    conf.set("dfs.datanode.address", "127.0.0.1:0");
    conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
    conf.setBoolean("dfs.datanode.use.datanode.hostname", false);
    conf.setInt("dfs.replication", 1);
    final MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
        .numDataNodes(1).format(true).build();
    cluster.waitActive();
    Runtime.getRuntime().addShutdownHook(new Thread(cluster::shutdown));
    String http = cluster.getNameNode().getHttpAddress().getPort() + "";
    String rpc = cluster.getNameNodePort() + "";
    File tmp = new File(ready.getPath() + ".tmp");
    Files.write(tmp.toPath(), ("webhdfs=http://127.0.0.1:" + http + "\nrpc=hdfs://127.0.0.1:" + rpc + "\n")
        .getBytes(StandardCharsets.UTF_8));
    if (!tmp.renameTo(ready)) {
      throw new IllegalStateException("cannot write " + ready);
    }
    System.out.println("MiniHdfs ready: webhdfs port " + http + ", rpc port " + rpc);
    System.out.flush();
    while (System.in.read() != -1) {
      // wait for the parent to close standard input
    }
    System.exit(0);
  }
}
