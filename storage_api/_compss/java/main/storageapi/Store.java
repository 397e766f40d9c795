package storageapi;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;

import storage.StorageException;

/**
 * The Java side of storage_api for COMPSs: reads object locations from the deployment's Redis and
 * sends version/replica requests to the backends through their Redis control queues (see
 * storage_api/_backend/_control.py; Java cannot speak the authenticated wire protocol).
 *
 * <p>Key layout (storage_api/_metadata.py): {@code ns:obj:<oid>} HASH {@code backend}, {@code replicas}
 * (comma-separated backend ids); {@code ns:backend:<bid>} HASH {@code compss_name}, {@code host};
 * {@code ns:alive:<bid>} exists while the backend is alive.
 *
 * <p>getLocations is called for every read parameter of every task by the COMPSs scheduler, so its
 * answers are cached for {@code location_cache_ms} (1 s by default): an entry expires after that,
 * and the ids a newVersion/newReplica/consolidateVersion touches are dropped from the cache at once.
 */
public final class Store {

    private static final class Cached {
        final List<String> value;
        final long expires;

        Cached(List<String> value, long expires) {
            this.value = value;
            this.expires = expires;
        }
    }

    private final StorageConf conf;
    private final Resp redis;
    private final String ns;
    private final long cacheNanos;
    private final int controlTimeoutS;
    private final Map<String, Cached> locations = new ConcurrentHashMap<>();
    private final Map<String, Cached> backendNames = new ConcurrentHashMap<>();

    private Store(StorageConf conf) throws StorageException {
        this.conf = conf;
        this.ns = conf.get("namespace");
        this.cacheNanos = conf.getInt("location_cache_ms") * 1_000_000L;
        this.controlTimeoutS = Math.max(1, conf.getInt("control_timeout"));
        this.redis = new Resp(conf.get("redis_url"), 5000);
    }

    /** Reads the conf and checks that Redis answers (a bad address fails here, in init). */
    public static Store open(String confPath) throws StorageException {
        Store s = new Store(StorageConf.read(confPath));
        Object pong = s.redis.call("PING");
        if (!"PONG".equals(pong)) {
            s.close();
            throw new StorageException("Redis at " + s.redis.address() + " answered PING with " + pong);
        }
        return s;
    }

    public boolean sameConf(String confPath) {
        String mine = conf.path() == null || "null".equals(conf.path()) ? "" : conf.path();
        String theirs = confPath == null || "null".equals(confPath) ? "" : confPath;
        return mine.equals(theirs);
    }

    private String key(String... parts) {
        StringBuilder b = new StringBuilder(ns);
        for (String p : parts) {
            b.append(':').append(p);
        }
        return b.toString();
    }

    // ------------------------------------------------------------------ locations
    public List<String> getLocations(String id) throws StorageException {
        if (id == null) {
            return new ArrayList<>();
        }
        long now = System.nanoTime();
        Cached c = locations.get(id);
        if (c != null && now - c.expires < 0) {
            return new ArrayList<>(c.value);
        }
        List<String> names = Collections.unmodifiableList(lookupLocations(id, now));
        locations.put(id, new Cached(names, now + cacheNanos));
        return new ArrayList<>(names);
    }

    @SuppressWarnings("unchecked")
    private List<String> lookupLocations(String id, long now) throws StorageException {
        Object reply = redis.call("HMGET", key("obj", id), "backend", "replicas");
        List<Object> fields = (List<Object>) reply;
        List<String> ids = new ArrayList<>();
        if (fields.get(0) != null && !((String) fields.get(0)).isEmpty()) {
            ids.add((String) fields.get(0));
        }
        if (fields.get(1) != null) {
            for (String r : ((String) fields.get(1)).split(",")) {
                if (!r.trim().isEmpty()) {
                    ids.add(r.trim());
                }
            }
        }
        LinkedHashSet<String> names = new LinkedHashSet<>();
        List<String> missing = new ArrayList<>();
        for (String bid : ids) {
            Cached n = backendNames.get(bid);
            if (n == null || now - n.expires >= 0) {
                missing.add(bid);
            }
        }
        if (!missing.isEmpty()) {
            List<List<String>> cmds = new ArrayList<>();
            for (String bid : missing) {
                cmds.add(Util.list("HMGET", key("backend", bid), "compss_name", "host"));
            }
            List<Object> replies = redis.pipeline(cmds, 0);
            for (int i = 0; i < missing.size(); i++) {
                Object r = replies.get(i);
                if (r instanceof StorageException) {
                    throw (StorageException) r;
                }
                List<Object> h = (List<Object>) r;
                String name = (String) h.get(0);
                if (name == null || name.isEmpty()) {
                    name = (String) h.get(1);
                }
                List<String> value = new ArrayList<>();
                if (name != null && !name.isEmpty()) {
                    value.add(name);
                }
                backendNames.put(missing.get(i), new Cached(value, now + cacheNanos));
            }
        }
        for (String bid : ids) {
            names.addAll(backendNames.get(bid).value);
        }
        return new ArrayList<>(names);
    }

    private void forget(String... ids) {
        for (String id : ids) {
            if (id != null) {
                locations.remove(id);
            }
        }
    }

    // ------------------------------------------------------------------ versions and replicas
    public String newVersion(String id, boolean preserveSource, String hostName) throws StorageException {
        Object result = control(id, "new_version", "{\"oid\":" + Util.quote(id) + ",\"preserve\":" + preserveSource
            + ",\"host\":" + Util.quote(hostName == null ? "" : hostName) + "}");
        if (!(result instanceof String) || ((String) result).isEmpty()) {
            throw new StorageException("newVersion(" + id + "): the backend answered " + result);
        }
        forget(id, (String) result);
        return (String) result;
    }

    public void newReplica(String id, String hostName) throws StorageException {
        control(id, "new_replica", "{\"oid\":" + Util.quote(id) + ",\"host\":" + Util.quote(hostName == null ? "" : hostName) + "}");
        forget(id);
    }

    public void consolidateVersion(String idFinal) throws StorageException {
        control(idFinal, "consolidate", "{\"oid\":" + Util.quote(idFinal) + "}");
        forget(idFinal);
    }

    /** Sends a request to the backend owning {@code id} (any live backend if it is down) and waits for its answer. */
    @SuppressWarnings("unchecked")
    private Object control(String id, String op, String argsJson) throws StorageException {
        if (id == null || id.isEmpty()) {
            throw new StorageException(op + ": no object id");
        }
        Object owner = redis.call("HGET", key("obj", id), "backend");
        if (owner == null) {
            throw new StorageException(op + ": no object with id " + id);
        }
        Object alive = redis.call("EXISTS", key("alive", (String) owner));
        String queue = Long.valueOf(1).equals(alive) ? key("ctl", (String) owner) : key("ctl", "any");
        String reply = key("ctl", "reply", UUID.randomUUID().toString());
        String request = "{\"op\":" + Util.quote(op) + ",\"args\":" + argsJson + ",\"reply\":" + Util.quote(reply) + "}";
        redis.call("RPUSH", queue, request);
        // Wait on a connection of our own: getLocations (the scheduler's thread) must not queue behind it.
        Resp waiter = new Resp(conf.get("redis_url"), 5000);
        Object popped;
        try {
            popped = waiter.call(controlTimeoutS * 1000, "BLPOP", reply, Integer.toString(controlTimeoutS));
        } finally {
            waiter.close();
        }
        if (popped == null) {
            throw new StorageException(op + "(" + id + "): no backend answered within " + controlTimeoutS + " s");
        }
        Object answer;
        try {
            answer = Util.parseJson((String) ((List<Object>) popped).get(1));
        } catch (RuntimeException e) {
            throw new StorageException(op + "(" + id + "): malformed answer from the backend", e);
        }
        Map<String, Object> m = (Map<String, Object>) answer;
        if (!Boolean.TRUE.equals(m.get("ok"))) {
            throw new StorageException(op + "(" + id + ") failed on the backend: " + m.get("error"));
        }
        return m.get("result");
    }

    public void close() {
        redis.close();
        locations.clear();
        backendNames.clear();
    }
}
