package storage;

/** Compile-time stand-in of COMPSs' storage.CallbackEvent (exact COMPSs 3.3 API). */
public class CallbackEvent {

    public static enum EventType {
        FAIL, SUCCESS
    }

    private String requestID;
    private EventType type;
    private Object content;

    public CallbackEvent() {
    }

    public CallbackEvent(String executeTaskId, EventType eventStatus, Object returnObject) {
        setRequestID(executeTaskId);
        setType(eventStatus);
        this.content = returnObject;
    }

    public String getRequestID() {
        return requestID;
    }

    public void setRequestID(String requestID) {
        if (requestID == null) {
            throw new IllegalArgumentException("requestID cannot be null");
        }
        this.requestID = requestID;
    }

    public EventType getType() {
        return type;
    }

    public void setType(EventType type) {
        if (type == null) {
            throw new IllegalArgumentException("type cannot be null");
        }
        this.type = type;
    }

    public Object getContent() {
        return content;
    }

    public void setContent(Object content) {
        this.content = content;
    }
}
