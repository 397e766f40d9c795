package storageapi;

import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.URI;
import java.net.URISyntaxException;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import storage.StorageException;

/**
 * A minimal RESP2 client: one socket, AUTH and SELECT from a {@code redis://[user:password@]host:port/db}
 * URL, pipelined commands, one reconnection attempt when the socket breaks. Replies are String,
 * Long, List&lt;Object&gt; or null; an error reply becomes a StorageException.
 */
public final class Resp {

    private final String host;
    private final int port;
    private final String user;
    private final String password;
    private final int db;
    private final int timeoutMs;
    private Socket socket;
    private InputStream in;
    private OutputStream out;

    public Resp(String url, int timeoutMs) throws StorageException {
        URI uri;
        try {
            uri = new URI(url);
        } catch (URISyntaxException e) {
            throw new StorageException("invalid Redis URL " + redact(url), e);
        }
        if (!"redis".equals(uri.getScheme()) || uri.getHost() == null) {
            throw new StorageException("unsupported Redis URL " + redact(url) + " (Java needs redis://host:port/db)");
        }
        this.host = uri.getHost();
        this.port = uri.getPort() > 0 ? uri.getPort() : 6379;
        String info = uri.getRawUserInfo();
        if (info != null) {
            int colon = info.indexOf(':');
            this.user = colon > 0 ? decode(info.substring(0, colon)) : null;
            this.password = colon >= 0 ? decode(info.substring(colon + 1)) : decode(info);
        } else {
            this.user = null;
            this.password = null;
        }
        String path = uri.getPath() == null ? "" : uri.getPath().replace("/", "");
        try {
            this.db = path.isEmpty() ? 0 : Integer.parseInt(path);
        } catch (NumberFormatException e) {
            throw new StorageException("Redis URL " + redact(url) + ": database must be a number");
        }
        this.timeoutMs = timeoutMs;
    }

    private static String decode(String s) {
        try {
            return URLDecoder.decode(s, "UTF-8");
        } catch (java.io.UnsupportedEncodingException e) {
            return s;
        }
    }

    /** The URL without its password, for messages. */
    public static String redact(String url) {
        return url == null ? "null" : url.replaceAll("//[^@/]*@", "//***@");
    }

    public String address() {
        return host + ":" + port;
    }

    private void connect() throws StorageException {
        try {
            Socket s = new Socket();
            s.connect(new InetSocketAddress(host, port), timeoutMs);
            s.setTcpNoDelay(true);
            s.setSoTimeout(timeoutMs);
            socket = s;
            in = new BufferedInputStream(s.getInputStream());
            out = s.getOutputStream();
        } catch (IOException e) {
            close();
            throw new StorageException("cannot reach Redis at " + address() + ": " + e.getMessage(), e);
        }
        List<List<String>> setup = new ArrayList<>();
        if (password != null) {
            setup.add(user != null ? Util.list("AUTH", user, password) : Util.list("AUTH", password));
        }
        if (db != 0) {
            setup.add(Util.list("SELECT", Integer.toString(db)));
        }
        if (!setup.isEmpty()) {
            List<Object> replies;
            try {
                replies = roundtrip(setup, 0);
            } catch (IOException e) {
                close();
                throw new StorageException("lost connection to Redis at " + address() + ": " + e.getMessage(), e);
            }
            for (Object reply : replies) {
                if (reply instanceof StorageException) {
                    close();
                    throw new StorageException("Redis at " + address() + " refused the connection setup: "
                        + ((StorageException) reply).getMessage());
                }
            }
        }
    }

    /** Runs one command; {@code extraWaitMs} lengthens the read timeout (for BLPOP). */
    public synchronized Object call(int extraWaitMs, String... args) throws StorageException {
        List<List<String>> one = new ArrayList<>();
        one.add(Util.list(args));
        Object reply = pipeline(one, extraWaitMs).get(0);
        if (reply instanceof StorageException) {
            throw (StorageException) reply;
        }
        return reply;
    }

    public Object call(String... args) throws StorageException {
        return call(0, args);
    }

    /** Runs commands in one round trip; an error reply is returned in place as a StorageException. */
    public synchronized List<Object> pipeline(List<List<String>> commands, int extraWaitMs) throws StorageException {
        for (int attempt = 0;; attempt++) {
            boolean fresh = socket == null;
            if (fresh) {
                connect();
            }
            try {
                return roundtrip(commands, extraWaitMs);
            } catch (IOException e) {
                close();
                if (fresh || attempt > 0) {
                    throw new StorageException("lost connection to Redis at " + address() + ": " + e.getMessage(), e);
                }
            }
        }
    }

    private List<Object> roundtrip(List<List<String>> commands, int extraWaitMs) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        for (List<String> cmd : commands) {
            buf.write(("*" + cmd.size() + "\r\n").getBytes(StandardCharsets.UTF_8));
            for (String arg : cmd) {
                byte[] b = arg.getBytes(StandardCharsets.UTF_8);
                buf.write(("$" + b.length + "\r\n").getBytes(StandardCharsets.UTF_8));
                buf.write(b);
                buf.write('\r');
                buf.write('\n');
            }
        }
        out.write(buf.toByteArray());
        out.flush();
        socket.setSoTimeout(timeoutMs + extraWaitMs);
        List<Object> replies = new ArrayList<>();
        try {
            for (int i = 0; i < commands.size(); i++) {
                replies.add(read());
            }
        } finally {
            socket.setSoTimeout(timeoutMs);
        }
        return replies;
    }

    private String line() throws IOException {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        int c;
        while ((c = in.read()) != -1) {
            if (c == '\r') {
                if (in.read() != '\n') {
                    throw new IOException("malformed Redis reply");
                }
                return new String(b.toByteArray(), StandardCharsets.UTF_8);
            }
            b.write(c);
        }
        throw new IOException("connection closed by Redis");
    }

    private Object read() throws IOException {
        String l = line();
        if (l.isEmpty()) {
            throw new IOException("empty Redis reply");
        }
        char kind = l.charAt(0);
        String rest = l.substring(1);
        switch (kind) {
            case '+':
                return rest;
            case '-':
                return new StorageException("Redis error: " + rest);
            case ':':
                return Long.valueOf(rest);
            case '$': {
                int n = Integer.parseInt(rest);
                if (n < 0) {
                    return null;
                }
                byte[] data = new byte[n];
                int off = 0;
                while (off < n) {
                    int r = in.read(data, off, n - off);
                    if (r < 0) {
                        throw new IOException("connection closed by Redis");
                    }
                    off += r;
                }
                if (in.read() != '\r' || in.read() != '\n') {
                    throw new IOException("malformed Redis bulk reply");
                }
                return new String(data, StandardCharsets.UTF_8);
            }
            case '*': {
                int n = Integer.parseInt(rest);
                if (n < 0) {
                    return null;
                }
                List<Object> items = new ArrayList<>(n);
                for (int i = 0; i < n; i++) {
                    items.add(read());
                }
                return items;
            }
            default:
                throw new IOException("unexpected Redis reply " + l);
        }
    }

    public synchronized void close() {
        if (socket != null) {
            try {
                socket.close();
            } catch (IOException e) {
                // closing anyway
            }
        }
        socket = null;
        in = null;
        out = null;
    }
}
