// java_nio: a Java program with a java.nio Selector (issue 12): the JVM's
// epoll selector and its wakeup pipe, a non-blocking server socket channel
// and a client channel connected to it over loopback TCP, all in one
// selector loop, with the JVM's own threads (compiler, GC, signal
// dispatcher) and OpenJDK's use of the checkpoint signal number for its own
// thread wake-ups. The client sends numbered requests, the server answers
// each; at three gates requests and answers are in flight. Every answer
// arrives once and in order; the progress at each gate and the totals are
// printed. Run as a single-file source program: java java_nio.java [N].
import java.io.File;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;

public class JavaNio {
    static final int RECORD = 16;

    static void line(String s) {
        System.out.println(s);
        System.out.flush();
    }

    static void gate(int k) throws Exception {
        line("hold " + k);
        String dir = System.getenv("CR_GATE_DIR");
        if (dir != null && !dir.isEmpty()) {
            File g = new File(dir, "gate-" + k);
            File ping = new File(dir, "gate-" + k + ".ping");
            while (g.exists()) {
                ping.delete();
                Thread.sleep(5);
            }
        }
        line("go " + k);
    }

    static long answer(long i) {
        return (i * 7919L) % 1000003L;
    }

    public static void main(String[] args) throws Exception {
        int n = args.length > 0 ? Integer.parseInt(args[0]) : 3000;
        Selector sel = Selector.open();
        ServerSocketChannel srv = ServerSocketChannel.open();
        srv.bind(new InetSocketAddress("127.0.0.1", 0));
        srv.configureBlocking(false);
        srv.register(sel, SelectionKey.OP_ACCEPT);
        SocketChannel client = SocketChannel.open(srv.getLocalAddress());
        client.configureBlocking(false);
        SelectionKey ck = client.register(sel, SelectionKey.OP_READ | SelectionKey.OP_WRITE);
        String starts = System.getenv("CR_STARTS_LOG");
        if (starts != null && !starts.isEmpty()) {
            Files.write(Paths.get(starts), "READY\n".getBytes(),
                StandardOpenOption.CREATE, StandardOpenOption.APPEND);
        }
        line("READY");
        ByteBuffer out = ByteBuffer.allocate(RECORD * 64);
        out.flip();
        ByteBuffer in = ByteBuffer.allocate(RECORD);
        ByteBuffer sin = ByteBuffer.allocate(RECORD);
        ByteBuffer sout = ByteBuffer.allocate(RECORD * 1024);
        sout.flip();
        SocketChannel conn = null;
        SelectionKey sk = null;
        long sent = 0, got = 0, served = 0;
        int gates = 0;
        while (got < n) {
            sel.select(1000);
            for (SelectionKey key : sel.selectedKeys()) {
                if (key.isAcceptable()) {
                    conn = srv.accept();
                    conn.configureBlocking(false);
                    sk = conn.register(sel, SelectionKey.OP_READ);
                } else if (key == ck) {
                    if (key.isWritable()) {
                        if (!out.hasRemaining() && sent < n) {
                            out.clear();
                            while (out.remaining() >= RECORD && sent < n) {
                                out.putLong(sent).putLong(~sent);
                                sent++;
                            }
                            out.flip();
                        }
                        client.write(out);
                        if (!out.hasRemaining() && sent >= n) {
                            ck.interestOps(SelectionKey.OP_READ);
                        }
                    }
                    if (key.isReadable()) {
                        while (client.read(in) > 0) {
                            if (in.hasRemaining()) {
                                continue;
                            }
                            in.flip();
                            long i = in.getLong(), a = in.getLong();
                            in.clear();
                            if (i != got || a != answer(i)) {
                                line("FAIL: answer " + got + ": " + i + " " + a);
                                System.exit(1);
                            }
                            got++;
                            if (gates < 3 && got >= (gates + 1) * (long) n / 4) {
                                gates++;
                                line("answers " + got);
                                gate(gates);
                            }
                        }
                    }
                } else if (key == sk) {
                    if (key.isReadable()) {
                        while (conn.read(sin) > 0) {
                            if (sin.hasRemaining()) {
                                continue;
                            }
                            sin.flip();
                            long i = sin.getLong();
                            if (sin.getLong() != ~i || i != served) {
                                line("FAIL: request " + served);
                                System.exit(1);
                            }
                            sin.clear();
                            sout.compact();
                            sout.putLong(i).putLong(answer(i));
                            sout.flip();
                            served++;
                            if (sout.remaining() > RECORD * 1000) {
                                break;
                            }
                        }
                    }
                    if (sout.hasRemaining()) {
                        conn.write(sout);
                    }
                    sk.interestOps(SelectionKey.OP_READ
                        | (sout.hasRemaining() ? SelectionKey.OP_WRITE : 0));
                }
            }
            sel.selectedKeys().clear();
        }
        line("answers " + got + ", served " + served);
        line("PASS");
    }
}
