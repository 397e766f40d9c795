package storage;

import java.util.List;

import storageapi.Store;

/**
 * COMPSs' Storage Runtime Interface for storage_api: the nine static methods the COMPSs runtime
 * calls, with the exact COMPSs 3.3 descriptors. All the work is in {@link storageapi.Store}, which
 * talks to the deployment's Redis directly; every error reaches COMPSs as a {@link StorageException}.
 *
 * <p>Objects of storage_api are Python objects: {@code getByID}, {@code executeTask} and
 * {@code getResult} (which serve Java tasks) raise a StorageException saying so.
 */
public final class StorageItf {

    private static final String PYTHON_ONLY =
        "storage_api holds Python objects: Java tasks cannot load or run them (use PyCOMPSs tasks)";

    private static Store store;

    public StorageItf() {
    }

    /** Connects to the deployment the storage conf names; idempotent for the same conf. */
    public static synchronized void init(String storageConf) throws StorageException {
        if (store != null && store.sameConf(storageConf)) {
            return;
        }
        Store fresh;
        try {
            fresh = Store.open(storageConf);
        } catch (RuntimeException e) {
            throw wrap("init", e);
        }
        Store previous = store;
        store = fresh;
        if (previous != null) {
            previous.close();
        }
    }

    public static synchronized void finish() throws StorageException {
        if (store != null) {
            store.close();
            store = null;
        }
    }

    /** Anything unexpected (a malformed reply, say) still reaches COMPSs as a StorageException. */
    private static StorageException wrap(String method, RuntimeException e) {
        return new StorageException(method + ": " + e, e);
    }

    private static synchronized Store store() throws StorageException {
        if (store == null) {
            store = Store.open(null); // COMPSs always calls init first; be lenient when it did not
        }
        return store;
    }

    /** COMPSs resource names of the backends holding {@code pscoId}; empty (never null) if unknown. */
    public static List<String> getLocations(String pscoId) throws StorageException {
        try {
            return store().getLocations(pscoId);
        } catch (RuntimeException e) {
            throw wrap("getLocations", e);
        }
    }

    public static void newReplica(String id, String hostName) throws StorageException {
        try {
            store().newReplica(id, hostName);
        } catch (RuntimeException e) {
            throw wrap("newReplica", e);
        }
    }

    /** Copies {@code id} to a new id, on {@code hostName}'s backend when there is one. */
    public static String newVersion(String id, boolean preserveSource, String hostName) throws StorageException {
        try {
            return store().newVersion(id, preserveSource, hostName);
        } catch (RuntimeException e) {
            throw wrap("newVersion", e);
        }
    }

    public static Object getByID(String id) throws StorageException {
        throw new StorageException(PYTHON_ONLY);
    }

    public static String executeTask(String id, String descriptor, Object[] values, String hostName,
        CallbackHandler callback) throws StorageException {
        throw new StorageException(PYTHON_ONLY);
    }

    public static Object getResult(CallbackEvent event) throws StorageException {
        throw new StorageException(PYTHON_ONLY);
    }

    public static void consolidateVersion(String idFinal) throws StorageException {
        try {
            store().consolidateVersion(idFinal);
        } catch (RuntimeException e) {
            throw wrap("consolidateVersion", e);
        }
    }
}
